"""`lingraft propagate` end to end on tiny Llamas: B (base), I (an instruct sibling whose tables are B's
under a known linear map, with an extra special token and a chat template), A (B after `lingraft init`
with a trained Russian tokenizer, then "trained" by perturbing its tables)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lingraft.vocabulary.token_map import TOKEN_MAP_NAME
from tests.helpers import EMBED, FAMILY_HIDDEN, HEAD, INSTRUCT_CHAT, all_tensors, gpt2_with_chat_token, \
    propagation_family, train_small_ru_tokenizer


@pytest.fixture(scope="module")
def base_tok(shared):
    return gpt2_with_chat_token(shared)


@pytest.fixture(scope="module")
def new_tok_dir(shared, tmp_path_factory) -> Path:
    return train_small_ru_tokenizer(shared, tmp_path_factory.mktemp("tok") / "ru1000", 1000, 200_000)


@pytest.fixture(scope="module")
def untied(tmp_path_factory, base_tok, new_tok_dir):
    return propagation_family(tmp_path_factory.mktemp("untied"), base_tok, new_tok_dir, tied=False)


@pytest.fixture(scope="module")
def tied(tmp_path_factory, base_tok, new_tok_dir):
    return propagation_family(tmp_path_factory.mktemp("tied"), base_tok, new_tok_dir, tied=True)


def propagate(root: Path, method: str, out_name: str, instruct: str = "I", **flags) -> Path:
    from lingraft.cli import main
    out = root / out_name
    args = ["propagate", "--base", str(root / "B"), "--adapted", str(root / "A"), "--instruct", str(root / instruct),
            "--method", method, "--out", str(out)] + [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
    assert main(args) == 0
    return out


def _ids_in(folder: Path, out: Path, ids: list[int]) -> list[int]:
    """The ids, in `folder`'s tokenizer, of the tokens `ids` name in `out`'s."""
    from transformers import AutoTokenizer
    tokens = AutoTokenizer.from_pretrained(str(out)).convert_ids_to_tokens(ids)
    return AutoTokenizer.from_pretrained(str(folder)).convert_tokens_to_ids(tokens)


def _special_ids(out: Path) -> list[int]:
    from transformers import AutoTokenizer
    return sorted(AutoTokenizer.from_pretrained(str(out)).added_tokens_decoder)


@pytest.fixture(scope="module")
def converted(untied) -> Path:
    return propagate(untied[0], "conversion", "conv")


def test_conversion_applies_the_instruct_map_and_keeps_instruct(untied, converted):
    root, maps = untied
    out = converted
    a, i, o = all_tensors(root / "A"), all_tensors(root / "I"), all_tensors(out)
    special = _special_ids(out)
    ordinary = torch.ones(o[EMBED].shape[0], dtype=torch.bool)
    ordinary[special] = False
    for name, kind in ((EMBED, "input"), (HEAD, "head")):
        expected = (a[name].double() @ maps[kind].double()).float()
        assert torch.allclose(o[name][ordinary], expected[ordinary], atol=2e-4), name
    # Every other tensor is I's, bit for bit.
    assert set(o) == set(i)
    assert all(torch.equal(o[k], v) for k, v in i.items() if k not in (EMBED, HEAD))
    manifest = json.loads((out / "manifest.json").read_text())
    fits = manifest["metrics"]["fits"]
    assert set(fits) == {"input", "head"} and max(f["relative_residual"] for f in fits.values()) < 1e-5
    assert manifest["metrics"]["fit_rows_from"].endswith(TOKEN_MAP_NAME)
    assert all(manifest["inputs"][m]["sha256"] for m in ("base", "adapted", "instruct"))


def test_output_keeps_instruct_special_tokens_and_generates(untied, converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    root, _ = untied
    out = converted
    tok = AutoTokenizer.from_pretrained(str(out))
    instruct_tok = AutoTokenizer.from_pretrained(str(root / "I"))
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    # Special rows are I's, not propagated ones.
    tables, instruct = all_tensors(out), all_tensors(root / "I")
    from_instruct = [t.content for t in instruct_tok.added_tokens_decoder.values()]
    special = tok.convert_tokens_to_ids(from_instruct)
    assert eot in special and len(special) == 3          # <|endoftext|>, <|im_start|>, <|eot_id|>
    for name in (EMBED, HEAD):
        assert torch.equal(tables[name][special], instruct[name][_ids_in(root / "I", out, special)])
    config = json.loads((out / "config.json").read_text())
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == eot and config["vocab_size"] == tables[EMBED].shape[0]
    assert tok.chat_template == INSTRUCT_CHAT
    model = AutoModelForCausalLM.from_pretrained(str(out))
    ids = tok.apply_chat_template([{"role": "user", "content": "Привет, как дела?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    assert ids[0].tolist().count(eot) == 1                     # the template's token is one id
    # Russian text takes far fewer tokens than in I's GPT-2 vocabulary.
    text = "Привет, как дела? Сегодня хорошая погода."
    assert len(tok(text)["input_ids"]) < len(instruct_tok(text)["input_ids"]) / 2
    generated = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > ids.shape[1]


def test_output_carries_the_token_map_of_the_new_rows(untied, converted):
    from transformers import AutoTokenizer

    from lingraft.vocabulary.token_map import TokenMap
    root, _ = untied
    carried, adapted = TokenMap.load(converted), TokenMap.load(root / "A")
    for field in ("indptr", "indices", "weights", "provenance"):
        assert torch.equal(getattr(carried, field), getattr(adapted, field)), field
    assert carried.new_vocab == len(AutoTokenizer.from_pretrained(str(root / "A")))
    assert set(carried.provenance_counts()) - {"kept", "special"}     # it does say which rows are new
    manifest = json.loads((converted / "manifest.json").read_text())
    assert manifest["metrics"]["token_map"] == str(root / "A" / TOKEN_MAP_NAME)


def test_swap_puts_the_adapted_tables_in_unchanged(untied):
    root, _ = untied
    out = propagate(root, "swap", "swap")
    a, o = all_tensors(root / "A"), all_tensors(out)
    ordinary = torch.ones(o[EMBED].shape[0], dtype=torch.bool)
    ordinary[_special_ids(out)] = False
    for name in (EMBED, HEAD):
        assert torch.equal(o[name][ordinary], a[name][ordinary])
    assert json.loads((out / "manifest.json").read_text())["metrics"]["fits"] == {}


def test_overlap_fits_on_shared_tokens(untied):
    root, maps = untied
    out = propagate(root, "overlap", "overlap")
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert metrics["fit_rows_from"].endswith("shared tokens") and metrics["fits"]["input"]["rows"] > FAMILY_HIDDEN
    a, o = all_tensors(root / "A"), all_tensors(out)
    expected = (a[EMBED].double() @ maps["input"].double()).float()
    assert torch.allclose(o[EMBED][:100], expected[:100], atol=2e-4)


def test_rebuilt_token_map_matches_the_stored_one(untied, converted, tmp_path):
    root, _ = untied
    stored = converted
    (root / "A" / TOKEN_MAP_NAME).rename(tmp_path / TOKEN_MAP_NAME)
    try:
        rebuilt = propagate(root, "conversion", "conv_rebuilt")
        explicit = propagate(root, "conversion", "conv_explicit", token_map=tmp_path / TOKEN_MAP_NAME)
    finally:
        (tmp_path / TOKEN_MAP_NAME).rename(root / "A" / TOKEN_MAP_NAME)
    assert json.loads((rebuilt / "manifest.json").read_text())["metrics"]["fit_rows_from"].startswith("rebuilt")
    for folder in (rebuilt, explicit):
        assert torch.allclose(all_tensors(folder)[EMBED], all_tensors(stored)[EMBED], atol=1e-6)


def test_identical_base_and_instruct_give_the_adapted_tables(untied):
    root, _ = untied
    out = propagate(root, "conversion", "same", instruct="B")
    a, b, o = all_tensors(root / "A"), all_tensors(root / "B"), all_tensors(out)
    from transformers import AutoTokenizer
    base_tok = AutoTokenizer.from_pretrained(str(root / "B"))   # B's own added tokens: rows from "I" = B
    in_base = sorted(base_tok.added_tokens_decoder)
    special = AutoTokenizer.from_pretrained(str(out)).convert_tokens_to_ids(base_tok.convert_ids_to_tokens(in_base))
    ordinary = torch.ones(o[EMBED].shape[0], dtype=torch.bool)
    ordinary[special] = False
    for name in (EMBED, HEAD):
        assert torch.allclose(o[name][ordinary], a[name][ordinary], atol=1e-5)
        assert torch.equal(o[name][special], b[name][in_base])


def test_tied_model_fits_only_the_input_table(tied):
    from transformers import AutoModelForCausalLM
    root, maps = tied
    out = propagate(root, "conversion", "conv")
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert set(metrics["fits"]) == {"input"} and metrics["tied"]
    o, a = all_tensors(out), all_tensors(root / "A")
    assert HEAD not in o
    expected = (a[EMBED].double() @ maps["input"].double()).float()
    assert torch.allclose(o[EMBED][:500], expected[:500], atol=2e-4)
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_incompatible_models_write_nothing(untied, tied, run_cli):
    root, _ = untied
    code, _, err = run_cli("propagate", "--base", root / "B", "--adapted", root / "A", "--instruct", tied[0] / "I",
                           "--method", "swap", "--out", root / "never")
    assert code == 1 and "tied embeddings: base False vs instruct True" in err
    assert not (root / "never").exists()
    code, _, err = run_cli("propagate", "--base", root / "B", "--adapted", root / "A", "--instruct", root / "I",
                           "--method", "swap", "--token-map", "x", "--out", root / "never")
    assert code == 2 and "token_map" in err


def test_untied_adapted_into_tied_instruct_keeps_the_learnt_head(tied, untied, tmp_path):
    """A with its own head (init --method distill unties a tied model) into a tied I: the output is
    untied and its head is A's head under the head's own fitted map (B's = I's tied table)."""
    from transformers import AutoModelForCausalLM
    root, maps = tied
    family = tmp_path / "mixed"
    shutil.copytree(root, family, ignore=shutil.ignore_patterns("conv*"))
    shutil.rmtree(family / "A")
    shutil.copytree(untied[0] / "A", family / "A")          # same tokenizer and token map, untied tables
    out = propagate(family, "swap", "swap")
    a, o = all_tensors(family / "A"), all_tensors(out)
    copied = json.loads((out / "manifest.json").read_text())["metrics"]["instruct_rows_copied"]
    assert _rows_differing(o[HEAD], a[HEAD]) <= copied and _rows_differing(o[EMBED], a[EMBED]) <= copied
    assert not torch.equal(a[HEAD], a[EMBED])
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert not model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    metrics = json.loads((propagate(family, "conversion", "conv") / "manifest.json").read_text())["metrics"]
    assert set(metrics["fits"]) == {"input", "head"} and not metrics["tied"]


def test_tied_adapted_into_untied_instruct_serves_both_tables(tied, untied, tmp_path):
    root, _ = untied
    family = tmp_path / "mixed"
    shutil.copytree(root, family, ignore=shutil.ignore_patterns("conv*", "swap*", "overlap*"))
    shutil.rmtree(family / "A")
    shutil.copytree(tied[0] / "A", family / "A")
    out = propagate(family, "swap", "swap")
    a, o = all_tensors(family / "A"), all_tensors(out)
    copied = json.loads((out / "manifest.json").read_text())["metrics"]["instruct_rows_copied"]
    assert _rows_differing(o[EMBED], a[EMBED]) <= copied and _rows_differing(o[HEAD], a[EMBED]) <= copied


def _rows_differing(out: torch.Tensor, source: torch.Tensor) -> int:
    """Rows of `source` that `out` does not carry unchanged (the instruct model's special rows)."""
    return int((out[:len(source)] != source).any(dim=1).sum())
