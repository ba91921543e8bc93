"""`lingraft init` end to end on tiny random Llamas, the bpc function, and SmolLM2 with real weights."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lingraft.hf_folder import INDEX_FILE
from tests.helpers import all_tensors, save_tiny_llama
from lingraft.vocabulary.head_map_file import load_head_map
from lingraft.vocabulary.token_map import TokenMap

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
@pytest.fixture(scope="module")
def untied_mean(untied_model, new_tokenizer_dir, tmp_path_factory) -> Path:
    from lingraft.cli import main
    out = tmp_path_factory.mktemp("out") / "untied_mean"
    assert main(["init", "--model", str(untied_model), "--tokenizer", str(new_tokenizer_dir), "--method", "mean",
                 "--out", str(out), "--max-shard-gb", "0.0001", "--shrink-table", "true"]) == 0
    return out


def _new_text_tokens(tok, pattern: str) -> list[int]:
    import re
    return [i for piece, i in tok.backend_tokenizer.get_vocab(with_added_tokens=False).items()
            if re.fullmatch(pattern, piece)]


def test_surgery_changes_nothing_but_the_embeddings(untied_model, untied_mean):
    before, after = all_tensors(untied_model), all_tensors(untied_mean)
    assert set(before) == set(after)
    for name, tensor in before.items():
        if name not in (EMBED, HEAD):
            assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name
    index = json.loads((untied_mean / INDEX_FILE).read_text())
    assert len(index["metadata"]["shard_sha256"]) > 1           # re-sharded at 100 kB


def test_vocab_padding_config_and_loading(untied_mean, old_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(untied_mean))
    rows = math.ceil(len(tok) / 64) * 64
    tensors = all_tensors(untied_mean)
    assert tensors[EMBED].shape == tensors[HEAD].shape == (rows, 32)
    config = json.loads((untied_mean / "config.json").read_text())
    generation = json.loads((untied_mean / "generation_config.json").read_text())
    eot, im_start = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_start|>")
    assert config["vocab_size"] == rows
    assert config["bos_token_id"] == generation["bos_token_id"] == eot
    assert config["eos_token_id"] == generation["eos_token_id"] == [eot, im_start]
    model = AutoModelForCausalLM.from_pretrained(str(untied_mean))
    assert torch.equal(model.get_input_embeddings().weight, tensors[EMBED])
    assert torch.equal(model.get_output_embeddings().weight, tensors[HEAD])
    ids = tok("Привет, мир!", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(ids).logits).all()
    rendered = tok.apply_chat_template([{"role": "user", "content": "привет"}], tokenize=False)
    assert tok(rendered, add_special_tokens=False)["input_ids"][0] == im_start


def test_rows_are_kept_meaned_and_byte_mapped(untied_model, untied_mean, old_tokenizer):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(untied_mean))
    old, new = all_tensors(untied_model), all_tensors(untied_mean)
    n_old = len(old_tokenizer)
    for name in (EMBED, HEAD):
        # Kept: a token the old vocabulary holds (▁ vs Ġ conventions) keeps its row bit for bit.
        comma = tok.convert_tokens_to_ids(",")
        assert torch.equal(new[name][comma], old[name][old_tokenizer.convert_tokens_to_ids(",")])
        # Byte fallback: <0xD0> is the byte-level token "Ð".
        assert torch.equal(new[name][tok.convert_tokens_to_ids("<0xD0>")],
                           old[name][old_tokenizer.convert_tokens_to_ids("Ð")])
        # Special tokens are copied by string.
        for special in ("<|endoftext|>", "<|im_start|>"):
            assert torch.equal(new[name][tok.convert_tokens_to_ids(special)],
                               old[name][old_tokenizer.convert_tokens_to_ids(special)])
        # Mean: the average of the old rows of the word re-tokenized by the old tokenizer.
        words = _new_text_tokens(tok, "▁[а-яё]{4,}")[:20]
        assert len(words) == 20
        for i in words:
            text = tok.convert_ids_to_tokens(i).replace("▁", " ")
            pieces = old_tokenizer(text, add_special_tokens=False)["input_ids"]
            expected = old[name][pieces].float().mean(dim=0).to(torch.bfloat16)
            torch.testing.assert_close(new[name][i], expected, rtol=1e-2, atol=1e-3)
        # Padding rows: the mean of the old real rows (never the old checkpoint's own padding rows).
        fill = old[name][:n_old].float().mean(dim=0).to(torch.bfloat16)
        assert all(torch.equal(row, fill) for row in new[name][len(tok):])


def test_token_map_is_saved_and_reapplies(untied_model, untied_mean, old_tokenizer):
    tmap = TokenMap.load(untied_mean)
    old, new = all_tensors(untied_model), all_tensors(untied_mean)
    for name in (EMBED, HEAD):
        assert torch.equal(tmap.apply(old[name][:len(old_tokenizer)]), new[name][:tmap.new_vocab])
    manifest = json.loads((untied_mean / "manifest.json").read_text())
    counts = manifest["metrics"]["provenance"]
    assert counts == tmap.provenance_counts() and sum(counts.values()) == tmap.new_vocab
    assert counts["kept"] > 50 and counts["mean"] > 500 and counts["special"] == 2
    assert manifest["metrics"]["surgery_peak_rss_mb"] > 0 and manifest["metrics"]["surgery_seconds"] > 0


SPARE_ROWS = 100        # like Qwen's 271 rows past its tokenizer


@pytest.fixture(scope="module")
def spare_model(tmp_path_factory, old_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("spare") / "m"
    save_tiny_llama(folder, vocab=len(old_tokenizer) + SPARE_ROWS, tied=False, shard=None)
    old_tokenizer.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("added, shrink, padded_by", [(40, False, None), (40, True, 64), (SPARE_ROWS + 30, False, 64)],
                         ids=["fits-in-spare-rows", "shrink-asked", "grows"])
def test_new_tokens_take_spare_rows_before_the_table_grows(spare_model, old_tokenizer, tmp_path, run_cli, added,
                                                          shrink, padded_by):
    import copy
    tok = copy.deepcopy(old_tokenizer)
    assert tok.add_tokens([f"словоформа{i}" for i in range(added)]) == added
    tok.save_pretrained(str(tmp_path / "tok"))
    out = tmp_path / "out"
    code, _, err = run_cli("init", "--model", spare_model, "--tokenizer", tmp_path / "tok", "--out", out,
                           "--method", "mean", "--shrink-table", str(shrink).lower())
    assert code == 0, err
    tokens, stored = len(tok), len(old_tokenizer) + SPARE_ROWS
    expected = stored if padded_by is None else math.ceil(tokens / padded_by) * padded_by
    old, new = all_tensors(spare_model), all_tensors(out)
    assert new[EMBED].shape[0] == new[HEAD].shape[0] == expected
    assert json.loads((out / "config.json").read_text())["vocab_size"] == expected
    manifest = json.loads((out / "manifest.json").read_text())["metrics"]
    assert (manifest["rows"], manifest["checkpoint_rows"]) == (expected, stored)
    n_old = len(old_tokenizer)
    for name in (EMBED, HEAD):
        assert torch.equal(new[name][:n_old], old[name][:n_old])      # every old token kept bit for bit
        fill = old[name][:n_old].float().mean(dim=0).to(torch.bfloat16)
        assert all(torch.equal(row, fill) for row in new[name][tokens:])
        assert not any(torch.equal(row, fill) for row in new[name][n_old:tokens])   # added tokens are meaned


def test_tied_weighted_mean(tied_model, new_tokenizer_dir, tmp_path, run_cli, old_tokenizer, shared):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = tmp_path / "tied"
    code, stdout, _ = run_cli("init", "--model", tied_model, "--tokenizer", new_tokenizer_dir,
                              "--method", "weighted-mean", "--out", out, "--pad-to-multiple", "128",
                              "--shrink-table", "true",
                              "--eval-text", shared / "ru_text" / "ud_russian_sentences.jsonl", "--eval-max-docs", 5)
    assert code == 0 and "provenance" in stdout
    bpc = json.loads((out / "manifest.json").read_text())["metrics"]["bpc"]
    assert set(bpc) == {"original", "weighted-mean"} and bpc["original"]["documents"] == 5
    assert bpc["original"]["characters"] == bpc["weighted-mean"]["characters"]
    assert all(f"{r['bpc']:.4f}" in stdout for r in bpc.values())
    tensors = all_tensors(out)
    assert HEAD not in tensors and tensors[EMBED].shape[0] % 128 == 0
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    tok, old = AutoTokenizer.from_pretrained(str(out)), all_tensors(tied_model)[EMBED]
    for i in _new_text_tokens(tok, "▁[а-яё]{4,}")[:10]:
        pieces = old_tokenizer(tok.convert_ids_to_tokens(i).replace("▁", " "), add_special_tokens=False)["input_ids"]
        weights = torch.tensor([0.8 ** k * (0.1 if old_tokenizer.decode([p]).strip() == "" else 1.0)
                                for k, p in enumerate(pieces)])
        expected = (weights[:, None] * old[pieces].float()).sum(0) / weights.sum()
        torch.testing.assert_close(tensors[EMBED][i], expected.to(torch.bfloat16), rtol=1e-2, atol=1e-3)


def test_random_init_matches_old_statistics(tied_model, new_tokenizer_dir, tmp_path, run_cli, old_tokenizer):
    out = tmp_path / "random"
    code, stdout, _ = run_cli("init", "--model", tied_model, "--tokenizer", new_tokenizer_dir,
                              "--method", "random", "--out", out)
    assert code == 0 and "random" in stdout
    old = all_tensors(tied_model)[EMBED][:len(old_tokenizer)].float()
    new = all_tensors(out)[EMBED][:1500].float()
    torch.testing.assert_close(new.mean(0), old.mean(0), atol=0.01, rtol=0)
    torch.testing.assert_close(new.std(0), old.std(0), atol=0.01, rtol=0.1)
    assert not (out / "token_map.safetensors").exists()


@pytest.mark.parametrize("problem", ["old_tokenizer", "architecture", "shard", "resource"])
def test_bad_input_fails_cleanly(problem, untied_model, new_tokenizer_dir, tmp_path, run_cli, shared):
    import shutil
    model = untied_model
    extra: list[str] = ["--method", "mean"]
    if problem == "old_tokenizer":
        extra += ["--old-tokenizer", str(shared / "tokenizers" / "mistral" / "mistral7b_v0.1_tokenizer.model")]
        expected = "does not match this model"
    elif problem in ("architecture", "shard"):
        model = Path(shutil.copytree(untied_model, tmp_path / "broken"))
        if problem == "architecture":
            config = json.loads((model / "config.json").read_text())
            (model / "config.json").write_text(json.dumps({**config, "model_type": "mystery_lm"}))
            expected = "unknown architecture model_type='mystery_lm'"
        else:
            shard = sorted(model.glob("model-*.safetensors"))[-1]
            shard.write_bytes(shard.read_bytes()[:-8])
            expected = f"{shard.name}: corrupt shard"
    else:
        resource = tmp_path / "pairs.jsonl"
        resource.write_text('{"en": "cat", "ru": "кошка"}\nnot json\n')
        extra = ["--method", "transtokenize", "--translation-resource", str(resource),
                 "--old-language", "en", "--new-language", "ru"]
        expected = "pairs.jsonl"
    out = tmp_path / "out"
    code, _, err = run_cli("init", "--model", model, "--tokenizer", new_tokenizer_dir, "--out", out, *extra)
    assert code == 1 and expected in err, err
    assert not out.exists() and not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_config_errors(run_cli):
    code, _, err = run_cli("init", "--model", "m", "--tokenizer", "t", "--out", "o", "--method", "transtokenize")
    assert code == 2 and "needs at least one translation resource" in err
    code, _, err = run_cli("init", "--model", "m", "--tokenizer", "t", "--out", "o", "--method", "mean",
                           "--translation-resource", "x.jsonl")
    assert code == 2 and "only used by --method transtokenize" in err
    code, _, err = run_cli("init", "--model", "m", "--tokenizer", "t", "--out", "o")   # distill, the default
    assert code == 2 and "corpus" in err and "--method mean" in err
    code, _, err = run_cli("init", "--model", "m", "--tokenizer", "t", "--out", "o", "--method", "mean",
                           "--corpus", "x.jsonl")
    assert code == 2 and "only used by --method distill" in err


# -- bits per character --------------------------------------------------------------------------
def _reference_bits(model, ids_per_doc: list[list[int]], start: int, window: int) -> float:
    """Plain per-window computation: window k scores tokens k*L..k*L+L-1 given the token before them."""
    nll = 0.0
    for ids in ids_per_doc:
        full = [start, *ids]
        for k in range(0, len(ids), window):
            inputs = torch.tensor([full[k:k + window + 1]])
            logp = torch.log_softmax(model(inputs).logits[0, :-1].double(), dim=-1)
            nll -= logp.gather(1, inputs[0, 1:, None]).sum().item()
    return nll / math.log(2)


@pytest.mark.parametrize("window", [10_000, 5])
def test_bits_per_character_matches_direct_computation(tied_model, old_tokenizer, window):
    from transformers import AutoModelForCausalLM

    from lingraft.evaluation.bpc import bits_per_character
    model = AutoModelForCausalLM.from_pretrained(str(tied_model), dtype=torch.float32)
    texts = ["Мороз и солнце; день чудесный!", "", "A short one.",
             "Ещё ты дремлешь, друг прелестный — пора, красавица, проснись!"]
    ids = [old_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts if t]
    start = old_tokenizer.bos_token_id
    result = bits_per_character(model, old_tokenizer, texts, max_length=window, batch_tokens=40)
    chars = sum(len(t) for t in texts)
    assert (result.characters, result.documents, result.tokens) == (chars, 3, sum(map(len, ids)))
    expected = _reference_bits(model, ids, start, window) / chars
    assert result.bits_per_character == pytest.approx(expected, rel=1e-5)


# -- real weights ---------------------------------------------------------------------------------
def test_mean_init_beats_random_on_smollm2(smollm2, shared):
    """SmolLM2-135M-Instruct -> a Russian 32k BPE: mean-initialised rows keep the model far better
    than rows drawn at random from the old rows' distribution (bits per character on UD sentences)."""
    from transformers import AutoModelForCausalLM

    from lingraft.evaluation.bpc import bits_per_character
    from lingraft.vocabulary.init_config import InitConfig
    from lingraft.vocabulary.init_stage import build_tables
    from lingraft.vocabulary.loading import load_tokenizer
    from lingraft.vocabulary.token_matching import adopt_special_tokens
    old_tok = load_tokenizer(smollm2)
    new_tok = load_tokenizer(shared / "tokenizers" / "ruadapt_darulm_32k_bpe")
    adopt_special_tokens(new_tok, old_tok)
    model = AutoModelForCausalLM.from_pretrained(str(smollm2), dtype=torch.float32)
    old_table = model.get_input_embeddings().weight.detach().clone()
    with open(shared / "ru_text" / "ud_russian_sentences.jsonl", encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line, _ in zip(fh, range(16))]  # ~650 tokens: CPU-friendly
    model.resize_token_embeddings(len(new_tok), pad_to_multiple_of=64, mean_resizing=False)
    bpc = {}
    for method in ("mean", "random"):
        cfg = InitConfig(model=str(smollm2), tokenizer="-", out="-", method=method, shrink_table=True)
        table = build_tables(cfg, {EMBED: old_table}, old_tok, new_tok).tables[EMBED]
        model.get_input_embeddings().weight.data.copy_(table)      # tied: the head follows
        bpc[method] = bits_per_character(model, new_tok, texts).bits_per_character
    # Measured on these sentences: original 3.4, mean 3.8, random 5.2 bits per character.
    assert bpc["random"] > bpc["mean"] + 1.0, bpc


def test_transtokenize_is_wired_in(untied_model, new_tokenizer_dir, tmp_path, run_cli, shared):
    out = tmp_path / "tt"
    resource = f"{shared / 'parallel' / 'pud_en_ru.jsonl'},max_pairs=300"
    code, stdout, err = run_cli("init", "--model", untied_model, "--tokenizer", new_tokenizer_dir, "--out", out,
                                "--method", "transtokenize", "--translation-resource", resource,
                                "--old-language", "en", "--new-language", "ru")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    stats = manifest["metrics"]["transtokenize"]
    assert stats["resources"][0]["kind"] == "parallel" and stats["provenance"]["aligned"] > 50
    assert manifest["metrics"]["provenance"] == TokenMap.load(out).provenance_counts()
    assert manifest["params"]["translation_resource"][0]["old_field"] == "en"
    assert "aligned" in stdout


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_distill_unties_a_tied_model_and_learns_from_the_original(tied_model, new_tokenizer_dir, tmp_path, run_cli,
                                                                   ud_corpus, precision):
    """The default method on a tiny tied model: old rows untouched in both tables, the head untied
    and fitted (held-out cross-entropy below where it started), the input rows distilled; in bf16
    the passes are autocast and the tables still come out fp32 with their old rows exact."""
    from transformers import AutoModelForCausalLM
    out = tmp_path / "distill"
    code, stdout, err = run_cli("init", "--model", tied_model, "--tokenizer", new_tokenizer_dir, "--out", out,
                                "--corpus", ud_corpus, "--distill-passages", 48, "--distill-steps", 6,
                                "--distill-batch-size", 4, "--head-fit-epochs", 3, "--head-fit-lr", 0.01,
                                "--precision", precision, "--device", "cpu")
    assert code == 0, err
    stats = json.loads((out / "manifest.json").read_text())["metrics"]["distill"]
    assert stats["precision"] == {"fp32": "float32", "bf16": "bfloat16"}[precision] and stats["device"] == "cpu"
    assert stats["untied"] and stats["input"]["kl_last"] < stats["input"]["kl_first"]
    assert stats["output"]["held_out_best"] < stats["output"]["held_out_start"]   # the fit beat its starting map
    assert stats["output"]["rows_seen_as_target"] + stats["output"]["rows_never_seen"] == stats["learnt_rows"]
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert not model.config.tie_word_embeddings
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    token_map = TokenMap.load(out / "token_map.safetensors")
    kept = [i for i, code in enumerate(token_map.provenance.tolist()) if code == 0]   # "kept"
    old = all_tensors(tied_model)[EMBED]
    old_ids = torch.tensor([token_map.indices[token_map.indptr[i]] for i in kept])
    assert torch.equal(embed[kept], old[old_ids]) and torch.equal(head[kept], old[old_ids])
    learnt = [i for i, code in enumerate(token_map.provenance.tolist()) if code not in (0, 5)]
    assert not torch.equal(embed[learnt], head[learnt])
    # the fitted map is stored beside the model: one offset per learnt row, in id order
    assert json.loads((out / "manifest.json").read_text())["outputs"]["head_map"] == "head_map.safetensors"
    assert load_head_map(out / "head_map.safetensors", torch.tensor(learnt))["offset"].numel() == len(learnt)

