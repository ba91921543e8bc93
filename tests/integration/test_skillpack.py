"""Skill packs: the math on constructed tensors, then create → verify → apply on tiny Llamas
(exact round trip, quantized packs, composition, refusals, corruption) and a language pack
applied to an instruct sibling, checked against `lingraft propagate --method conversion`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lingraft.propagate.skillpack.skillpack_math import (
    add_row_delta,
    band_ranks,
    changed_rows,
    dequantize_rows,
    energy_rank,
    pack_int4,
    quantize_rows,
    truncated_svd,
    unpack_int4,
)
from tests.helpers import EMBED, HEAD, all_tensors
from tests.integration.train_tiny import make_tiny_llama

UNTOUCHED = "model.layers.1.mlp.down_proj.weight"
NORM = "model.layers.0.input_layernorm.weight"
FULL_RANK = "model.layers.1.self_attn.o_proj.weight"
EXACT = ["--energy", "1.0", "--top-precision", "float32", "--rest-precision", "float32"]


# -- math ----------------------------------------------------------------------------------------
def test_energy_rank_is_exact_on_constructed_spectra():
    s = torch.tensor([4.0, 3.0, 2.0, 1.0])                    # energies 16, 9, 4, 1 of 30
    assert energy_rank(s, 16 / 30) == 1
    assert energy_rank(s, 16 / 30 + 1e-9) == 2
    assert energy_rank(s, 25 / 30) == 2
    assert energy_rank(s, 0.9) == 3 and energy_rank(s, 29 / 30) == 3
    assert energy_rank(s, 1.0) == 4
    assert energy_rank(torch.tensor([4.0, 3.0, 0.0, 0.0]), 1.0) == 2      # zero tail never kept
    assert energy_rank(torch.zeros(5), 0.5) == 0
    # The same spectrum inside a matrix: the truncated SVD keeps the two leading directions.
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(12, 4, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(9, 4, generator=g, dtype=torch.float64))
    low = truncated_svd((u * s.double()) @ v.T, 0.8)
    assert low.rank == 2 and low.energy_kept == pytest.approx(25 / 30, rel=1e-12)
    assert torch.allclose(low.product(), (u[:, :2] * s[:2].double()) @ v[:, :2].T, atol=1e-12)


def test_int4_packing_round_trips_bit_exactly():
    every = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 1)
    assert torch.equal(unpack_int4(pack_int4(every), 16), every)
    odd = torch.randint(-8, 8, (5, 7), dtype=torch.int8, generator=torch.Generator().manual_seed(1))
    packed = pack_int4(odd)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 4)
    assert torch.equal(unpack_int4(packed, 7), odd)
    assert pack_int4(torch.tensor([[1, -1]], dtype=torch.int8)).item() == 0xF1   # low nibble first
    with pytest.raises(Exception, match="outside"):
        pack_int4(torch.tensor([[8]], dtype=torch.int8))


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("group_size", [0, 16, 5])
def test_quantization_error_is_within_half_a_step(bits, group_size):
    g = torch.Generator().manual_seed(bits + group_size)
    x = torch.randn(6, 37, generator=g) * torch.logspace(-3, 1, 6)[:, None]   # rows of very different scale
    x[2] = 0.0
    q = quantize_rows(x, bits, group_size)
    width = 37 if group_size == 0 else group_size
    step = q.scales.repeat_interleave(width, dim=1)[:, :37]
    error = (dequantize_rows(q) - x).abs()
    assert bool((error <= step / 2 * (1 + 1e-5)).all())
    assert torch.equal(dequantize_rows(q)[2], torch.zeros(37))
    assert q.codes.shape == ((6, 37) if bits == 8 else (6, 19))
    assert q.scales.shape == (6, -(-37 // width))


def test_bands_and_changed_rows():
    assert band_ranks(10, 0.25) == (3, 7) and band_ranks(0, 0.25) == (0, 0) and band_ranks(4, 1.0) == (4, 0)
    delta = torch.zeros(6, 3)
    delta[[1, 4], 2] = 0.5
    assert changed_rows(delta).tolist() == [1, 4]
    table = torch.ones(6, 3)
    assert torch.equal(add_row_delta(table, changed_rows(delta), delta[[1, 4]]), table + delta)


# -- tiny Llamas ---------------------------------------------------------------------------------
def derive(source: Path, out: Path, seed: int, rank: int = 3, touch_rows: tuple[int, ...] = (3, 10, 50)) -> Path:
    """A "fine-tune" of `source`: rank-`rank` updates on every matrix but two (one untouched, one
    moved at full rank), a few embedding and head rows moved, one norm shifted; in several shards."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(source))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name == EMBED:
                param[list(touch_rows)] += 0.1 * torch.randn(len(touch_rows), param.shape[1], generator=g)
            elif name == HEAD:
                param[7] += 0.1 * torch.randn(param.shape[1], generator=g)
            elif name == NORM:
                param += 0.01
            elif name == FULL_RANK:
                param += 0.01 * torch.randn(param.shape, generator=g)
            elif param.ndim == 2 and name != UNTOUCHED:
                a, b = torch.randn(param.shape[0], rank, generator=g), torch.randn(rank, param.shape[1], generator=g)
                param += 0.02 * a @ b
    model.save_pretrained(str(out), max_shard_size="100KB")
    return out


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("skill")
    make_tiny_llama(root / "tmp_base")
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(str(root / "tmp_base")).save_pretrained(str(root / "base"),
                                                                                  max_shard_size="100KB")
    derive(root / "base", root / "tuned", seed=1)
    derive(root / "tuned", root / "tuned2", seed=2, touch_rows=(3, 20))
    derive(root / "base", root / "other", seed=3)
    return root


def cli(run_cli, *args) -> str:
    code, out, err = run_cli(*args)
    assert code == 0, err
    return out


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture(scope="module")
def exact_pack(family) -> Path:
    from lingraft.cli import main
    assert main(["skillpack", "create", "--base", str(family / "base"), "--tuned", str(family / "tuned"),
                 "--out", str(family / "pack_exact"), *EXACT]) == 0
    return family / "pack_exact"


def test_exact_pack_round_trips(family, exact_pack, run_cli, tmp_path):
    from transformers import AutoModelForCausalLM
    modules = manifest(exact_pack)["outputs"]["modules"]
    assert modules[EMBED]["policy"] == "rows" and modules[EMBED]["rows"] == 3
    assert modules[HEAD]["policy"] == "rows" and modules[HEAD]["rows"] == 1
    assert modules[UNTOUCHED]["policy"] == "unchanged" and modules[NORM]["policy"] == "dense"
    assert modules["model.layers.0.self_attn.q_proj.weight"]["policy"] == "lowrank"
    assert modules["model.layers.0.self_attn.q_proj.weight"]["rank"] == 3
    # At full rank and float32, factors would outweigh the matrix: stored dense instead.
    assert modules[FULL_RANK]["policy"] == "dense" and modules[FULL_RANK]["lowrank_rank"] == 64
    cli(run_cli, "skillpack", "verify", "--pack", exact_pack, "--base", family / "base", "--tuned",
        family / "tuned", "--report", tmp_path / "verify.json")
    report = json.loads((tmp_path / "verify.json").read_text())
    assert report["relative_error"] < 1e-5 and max(r["relative_error"] for r in report["modules"].values()) < 1e-5
    cli(run_cli, "skillpack", "apply", "--base", family / "base", "--pack", exact_pack, "--out", tmp_path / "applied")
    applied, tuned = all_tensors(tmp_path / "applied"), all_tensors(family / "tuned")
    assert set(applied) == set(tuned)
    for name, t in tuned.items():
        assert torch.allclose(applied[name], t, rtol=0, atol=1e-6), name
    assert torch.equal(applied[EMBED], tuned[EMBED]) and torch.equal(applied[UNTOUCHED], tuned[UNTOUCHED])
    assert len(list((tmp_path / "applied").glob("model-*.safetensors"))) > 1
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "applied"))
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 96)


def test_quantized_pack_is_small_and_its_error_follows_the_energy(family, run_cli, tmp_path):
    from safetensors import safe_open
    pack = tmp_path / "q"
    cli(run_cli, "skillpack", "create", "--base", family / "base", "--tuned", family / "tuned", "--out", pack,
        "--beta", "0.9", "--group-size", "32")
    out = cli(run_cli, "skillpack", "inspect", "--pack", pack, "--modules")
    assert "lowrank" in out and "xint8" in out
    m = manifest(pack)
    with safe_open(str(pack / "pack.safetensors"), framework="pt") as fh:
        stored = {k: fh.get_tensor(k) for k in fh.keys()}
    for name, record in m["outputs"]["modules"].items():      # the recorded sizes are the stored bytes
        own = [t for k, t in stored.items() if k.startswith(name + "/")]
        assert record["bytes"] == sum(t.numel() * t.element_size() for t in own), name
        if record["policy"] == "lowrank":
            top, rest = band_ranks(record["rank"], 0.25)
            assert record["bands"] == [{"rank": top, "precision": "int8"}] + \
                ([{"rank": rest, "precision": "int4"}] if rest else [])
            assert stored[f"{name}/u0.q"].dtype == torch.int8
            if rest:                                                      # int4: two codes per byte
                assert stored[f"{name}/u1.q"].dtype == torch.uint8
                assert stored[f"{name}/u1.q"].shape == (rest, (record["shape"][0] + 1) // 2)
    assert m["outputs"]["modules"][FULL_RANK]["policy"] == "lowrank"
    assert m["metrics"]["size_ratio"] < 0.25
    cli(run_cli, "skillpack", "verify", "--pack", pack, "--base", family / "base", "--tuned", family / "tuned",
        "--report", tmp_path / "v.json")
    report = json.loads((tmp_path / "v.json").read_text())
    for name, row in report["modules"].items():
        if row["policy"] == "lowrank":
            kept = m["outputs"]["modules"][name]["energy_kept"]
            # truncation error sqrt(1 − kept), plus int4 rounding of the kept factors (~10%; an int4
            # code is one of 15 steps across its group's range)
            truncation = (1 - kept) ** 0.5
            assert truncation - 0.01 <= row["relative_error"] < truncation + 0.15, name


def test_bf16_rows_and_dense_deltas_come_back_exactly(family, run_cli, tmp_path):
    """In bf16 a delta is rounded (tuned − base needs more bits): stored wider, every changed
    table row and every dense module comes back bit for bit."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM
    derive(family / "base", tmp_path / "tuned32", seed=4)
    for src, dst in ((family / "base", "base"), (tmp_path / "tuned32", "tuned")):
        AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.bfloat16).save_pretrained(str(tmp_path / dst))
    cli(run_cli, "skillpack", "create", "--base", tmp_path / "base", "--tuned", tmp_path / "tuned",
        "--out", tmp_path / "pack", *EXACT)
    modules = manifest(tmp_path / "pack")["outputs"]["modules"]
    exact = [name for name, r in modules.items() if r["policy"] in ("rows", "dense")]
    assert {EMBED, HEAD, NORM, FULL_RANK} <= set(exact)
    with safe_open(str(tmp_path / "pack" / "pack.safetensors"), framework="pt") as fh:
        assert all(fh.get_tensor(f"{name}/delta").dtype == torch.float32 for name in exact)
    cli(run_cli, "skillpack", "apply", "--base", tmp_path / "base", "--pack", tmp_path / "pack",
        "--out", tmp_path / "applied")
    applied, tuned = all_tensors(tmp_path / "applied"), all_tensors(tmp_path / "tuned")
    assert tuned[EMBED].dtype == torch.bfloat16
    for name in exact + [UNTOUCHED]:
        assert torch.equal(applied[name], tuned[name]), name


def test_packs_compose_in_sequence(family, exact_pack, run_cli, tmp_path):
    cli(run_cli, "skillpack", "create", "--base", family / "tuned", "--tuned", family / "tuned2",
        "--out", tmp_path / "p2", *EXACT)
    cli(run_cli, "skillpack", "create", "--base", family / "base", "--tuned", family / "other",
        "--out", tmp_path / "p_other", *EXACT)
    # A chain: pack 2 was made on pack 1's tuned model.
    cli(run_cli, "skillpack", "apply", "--base", family / "base", "--pack", exact_pack, "--pack", tmp_path / "p2",
        "--out", tmp_path / "chain")
    chained, tuned2 = all_tensors(tmp_path / "chain"), all_tensors(family / "tuned2")
    assert all(torch.allclose(chained[n], t, rtol=0, atol=2e-6) for n, t in tuned2.items())
    # Stacked: two packs of the same base add their deltas.
    cli(run_cli, "skillpack", "apply", "--base", family / "base", "--pack", exact_pack,
        "--pack", tmp_path / "p_other", "--out", tmp_path / "stack")
    base, tuned, other = (all_tensors(family / n) for n in ("base", "tuned", "other"))
    stacked = all_tensors(tmp_path / "stack")
    for name in base:
        assert torch.allclose(stacked[name], tuned[name] + other[name] - base[name], atol=2e-6), name
    # The wrong order is refused: pack 2's base is not the base model.
    code, _, err = run_cli("skillpack", "apply", "--base", family / "base", "--pack", tmp_path / "p2",
                           "--pack", exact_pack, "--out", tmp_path / "never")
    assert code == 1 and "made for another base" in err and not (tmp_path / "never").exists()


def test_wrong_base_is_refused_unless_allowed(family, exact_pack, run_cli, tmp_path):
    code, _, err = run_cli("skillpack", "apply", "--base", family / "other", "--pack", exact_pack,
                           "--out", tmp_path / "never")
    assert code == 1 and "made for another base" in err and "--allow-other-base" in err
    assert "other weights" in err and not (tmp_path / "never").exists()
    mapped = tmp_path / "other"                  # a model with provenance maps (e.g. a propagated one)
    shutil.copytree(family / "other", mapped)
    for name in ("token_map.safetensors", "head_map.safetensors"):
        (mapped / name).write_bytes(name.encode())
    cli(run_cli, "skillpack", "apply", "--base", mapped, "--pack", exact_pack, "--allow-other-base",
        "--out", tmp_path / "forced")
    for name in ("token_map.safetensors", "head_map.safetensors"):   # the tables are the model's: so are their maps
        assert (tmp_path / "forced" / name).read_bytes() == name.encode()
    base, tuned, other = (all_tensors(family / n) for n in ("base", "tuned", "other"))
    forced = all_tensors(tmp_path / "forced")
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(forced[name], other[name] + tuned[name] - base[name], atol=2e-6)
    assert manifest(tmp_path / "forced")["outputs"]["packs"][0]["onto_sibling"] is True
    code, _, err = run_cli("skillpack", "verify", "--pack", exact_pack, "--base", family / "other",
                           "--tuned", family / "tuned")
    assert code == 1 and "not the base model" in err


def test_bad_requests_fail_before_any_work(family, run_cli, tmp_path):
    code, _, err = run_cli("skillpack", "create", "--base", family / "base", "--tuned", family / "tuned",
                           "--out", tmp_path / "x", "--beta", "1.5")
    assert code == 2 and "energy" in err
    code, _, err = run_cli("skillpack", "apply", "--base", family / "base", "--out", tmp_path / "x")
    assert code == 2 and "packs" in err
    code, _, err = run_cli("skillpack", "create", "--base", family / "base", "--tuned", family / "tuned",
                           "--language", "--out", tmp_path / "x")
    assert code == 1 and "needs a new vocabulary" in err and not (tmp_path / "x").exists()


def test_corrupted_pack_is_detected(exact_pack, family, run_cli, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exact_pack, broken)
    data = bytearray((broken / "pack.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (broken / "pack.safetensors").write_bytes(bytes(data))
    for command in (["inspect", "--pack", broken],
                    ["apply", "--base", family / "base", "--pack", broken, "--out", tmp_path / "never"]):
        code, _, err = run_cli("skillpack", *command)
        assert code == 1 and f"{broken / 'pack.safetensors'}: corrupt skill pack file" in err
    shutil.copy(exact_pack / "pack.safetensors", broken / "pack.safetensors")
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["outputs"]["files"]["../../etc/passwd"] = "0" * 64      # a manifest must not point outside
    (broken / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli("skillpack", "inspect", "--pack", broken)
    assert code == 1 and "is outside" in err and "etc/passwd" in err
    (broken / "manifest.json").unlink()
    code, _, err = run_cli("skillpack", "inspect", "--pack", broken)
    assert code == 1 and f"{broken / 'manifest.json'}: missing" in err


# -- a language pack is LEP in a file ---------------------------------------------------------------
def test_language_pack_on_a_sibling_equals_propagate_conversion(shared, tmp_path, run_cli):
    from transformers import AutoTokenizer

    from tests.helpers import gpt2_with_chat_token, make_adapted, make_instruct, tiny_llama, train_small_ru_tokenizer, \
        true_map
    base_tok = gpt2_with_chat_token(shared)
    new_tok = train_small_ru_tokenizer(shared, tmp_path / "ru", 1000, 200_000)
    tiny_llama(tmp_path / "B", base_tok, tied=False)
    make_instruct(tmp_path / "B", tmp_path / "I", base_tok, {"input": true_map(1), "head": true_map(2)})
    cli(run_cli, "init", "--model", tmp_path / "B", "--tokenizer", new_tok, "--out", tmp_path / "init",
        "--method", "mean")
    make_adapted(tmp_path / "init", tmp_path / "A")

    pack = tmp_path / "lang"
    cli(run_cli, "skillpack", "create", "--base", tmp_path / "B", "--tuned", tmp_path / "A", "--language",
        "--out", pack)
    assert (pack / "token_map.safetensors").is_file()
    modules = manifest(pack)["outputs"]["modules"]
    assert set(modules) == {EMBED, HEAD} and {r["policy"] for r in modules.values()} == {"table"}
    cli(run_cli, "skillpack", "verify", "--pack", pack, "--base", tmp_path / "B", "--tuned", tmp_path / "A",
        "--report", tmp_path / "verify.json")
    assert json.loads((tmp_path / "verify.json").read_text())["relative_error"] == 0.0
    # On its own base the pack rebuilds A: its tables and its tokenizer.
    cli(run_cli, "skillpack", "apply", "--base", tmp_path / "B", "--pack", pack, "--out", tmp_path / "B+lang")
    rebuilt, adapted = all_tensors(tmp_path / "B+lang"), all_tensors(tmp_path / "A")
    assert all(torch.equal(rebuilt[n], adapted[n]) for n in (EMBED, HEAD))
    assert (tmp_path / "B+lang" / "token_map.safetensors").is_file()
    assert AutoTokenizer.from_pretrained(str(tmp_path / "B+lang")).get_vocab() == \
        AutoTokenizer.from_pretrained(str(tmp_path / "A")).get_vocab()
    # On the instruct sibling it is refused without the flag, and is LEP conversion with it.
    code, _, err = run_cli("skillpack", "apply", "--base", tmp_path / "I", "--pack", pack, "--out", tmp_path / "no")
    assert code == 1 and "--allow-other-base" in err
    cli(run_cli, "skillpack", "apply", "--base", tmp_path / "I", "--pack", pack, "--allow-other-base",
        "--out", tmp_path / "I+lang")
    cli(run_cli, "propagate", "--base", tmp_path / "B", "--adapted", tmp_path / "A", "--instruct", tmp_path / "I",
        "--method", "conversion", "--out", tmp_path / "lep")
    packed, lep, instruct = (all_tensors(tmp_path / n) for n in ("I+lang", "lep", "I"))
    assert set(packed) == set(lep)
    assert all(torch.equal(packed[n], lep[n]) for n in lep)
    assert all(torch.equal(packed[n], t) for n, t in instruct.items() if n not in (EMBED, HEAD))
    for name in ("config.json", "generation_config.json"):
        assert json.loads((tmp_path / "I+lang" / name).read_text()) == json.loads((tmp_path / "lep" / name).read_text())
    ours, theirs = (AutoTokenizer.from_pretrained(str(tmp_path / n)) for n in ("I+lang", "lep"))
    assert ours.get_vocab() == theirs.get_vocab() and ours.chat_template == theirs.chat_template
