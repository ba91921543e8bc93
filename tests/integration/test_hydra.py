"""Hydra export: one body, the original and a new vocabulary in one input table, a head per language.

O is a tiny Llama with the GPT-2 tokenizer; N is the same body with the darulm-32k vocabulary and new
random tables (what `lingraft propagate` produces). The Hydra model must reproduce each of them
exactly through the matching head, accept prompts mixing both tokenizers, and split back into
plain checkpoints bit for bit.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import all_tensors

CHAT = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|endoftext|>{% endfor %}<|im_start|>"


def _make_pair(root: Path, shared: Path, tied: bool) -> tuple[Path, Path]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from lingraft.vocabulary.loading import load_tokenizer
    from lingraft.vocabulary.token_matching import adopt_special_tokens
    old_tok = load_tokenizer(shared / "tokenizers" / "gpt2")
    old_tok.add_tokens(["<|im_start|>"], special_tokens=True)
    old_tok.chat_template = CHAT
    eos = old_tok.convert_tokens_to_ids("<|endoftext|>")
    config = LlamaConfig(vocab_size=len(old_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tied, bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(root / "O"))
    old_tok.save_pretrained(str(root / "O"))
    new_tok = load_tokenizer(shared / "tokenizers" / "ruadapt_darulm_32k_bpe")
    adopt_special_tokens(new_tok, old_tok)
    model.resize_token_embeddings(len(new_tok), mean_resizing=False)
    with torch.no_grad():
        for table in {id(t): t for t in (model.get_input_embeddings().weight,
                                         model.get_output_embeddings().weight)}.values():
            table.normal_(std=0.5)
    new_eos = new_tok.convert_tokens_to_ids("<|endoftext|>")
    model.config.bos_token_id = model.config.eos_token_id = new_eos
    model.generation_config.bos_token_id = model.generation_config.eos_token_id = new_eos
    model.save_pretrained(str(root / "N"))
    new_tok.save_pretrained(str(root / "N"))
    return root / "O", root / "N"


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def hydra(request, shared, tmp_path_factory):
    from lingraft.cli import main
    root = tmp_path_factory.mktemp("hydra")
    original, adapted = _make_pair(root, shared, tied=request.param)
    assert main(["hydra", "export", "--original", str(original), "--adapted", str(adapted), "--language", "ru",
                 "--out", str(root / "H")]) == 0
    return root


def _plain(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoModelForCausalLM.from_pretrained(str(folder)).eval(), AutoTokenizer.from_pretrained(str(folder))


def test_each_head_reproduces_its_source_model(hydra):
    from lingraft.propagate.hydra.model import HydraForCausalLM, namespaced
    model = HydraForCausalLM.from_pretrained(hydra / "H", dtype=torch.float32)
    assert model.spec.default_head == "ru" and [v.name for v in model.spec.vocabularies] == ["orig", "ru"]
    for name, folder, text in (("orig", "O", "The weather is nice today."), ("ru", "N", "Сегодня хорошая погода.")):
        plain, tok = _plain(hydra / folder)
        ids = tok(text)["input_ids"]
        expected = plain(torch.tensor([ids])).logits
        got, _ = model(torch.tensor([namespaced(ids, model.spec.vocabulary(name))]), head=name)
        assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5), name


def test_generation_with_cache_matches_the_plain_model(hydra):
    from lingraft.propagate.hydra.model import HydraForCausalLM, namespaced
    model = HydraForCausalLM.from_pretrained(hydra / "H", dtype=torch.float32)
    plain, tok = _plain(hydra / "N")
    ids = tok("Привет, мир")["input_ids"]
    expected = plain.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
    got = model.generate(torch.tensor([namespaced(ids, model.spec.vocabulary("ru"))]), "ru", max_new_tokens=8)
    assert got == expected


def test_a_prompt_can_mix_both_vocabularies(hydra, run_cli):
    from lingraft.propagate.hydra.generate import hydra_prompt_ids, split_prompt
    from lingraft.propagate.hydra.model import HydraForCausalLM, HydraSpec
    spec = HydraSpec.load(hydra / "H")
    pieces = split_prompt(["orig:Translate: good morning -> ", "ru:доброе", "Note: no vocabulary named Note"], spec, "ru")
    assert [p[0] for p in pieces] == ["orig", "ru", "ru"]
    ids = hydra_prompt_ids(hydra / "H", spec, pieces, chat=False)
    orig, ru = spec.vocabulary("orig"), spec.vocabulary("ru")
    assert any(i < ru.offset for i in ids) and any(i >= ru.offset for i in ids)
    model = HydraForCausalLM.from_pretrained(hydra / "H", dtype=torch.float32)
    for head, vocab in (("orig", orig), ("ru", ru)):
        logits, _ = model(torch.tensor([ids]), head=head)
        assert logits.shape == (1, len(ids), vocab.size) and torch.isfinite(logits).all()
    code, out, _ = run_cli("generate", "--model", hydra / "H", "--head", "orig", "--prompt", "orig:Hello ",
                           "--prompt", "ru:мир", "--max-new-tokens", "4")
    assert code == 0 and out.strip()
    code, _, err = run_cli("generate", "--model", hydra / "H", "--chat", "--prompt", "orig:Hi", "--prompt", "ru:мир")
    assert code == 1 and "one vocabulary" in err


def test_chat_prompt_uses_the_vocabularys_template(hydra, run_cli):
    from lingraft.propagate.hydra.generate import hydra_prompt_ids
    from lingraft.propagate.hydra.model import HydraSpec
    spec = HydraSpec.load(hydra / "H")
    _, tok = _plain(hydra / "N")
    ids = hydra_prompt_ids(hydra / "H", spec, [("ru", "привет")], chat=True)
    im_start = spec.vocabulary("ru").offset + tok.convert_tokens_to_ids("<|im_start|>")
    assert ids[0] == ids[-1] == im_start            # the template's special token, one namespaced id
    code, _, err = run_cli("generate", "--model", hydra / "H", "--chat", "--prompt", "привет", "--max-new-tokens", "3")
    assert code == 0, err


def test_plain_exports_give_back_the_source_checkpoints(hydra, run_cli):
    for name, folder in (("orig", "O"), ("ru", "N")):
        out = hydra / f"plain_{name}"
        code, _, err = run_cli("hydra", "plain", "--hydra", hydra / "H", "--language", name, "--out", out)
        assert code == 0, err
        source, exported = all_tensors(hydra / folder), all_tensors(out)
        assert set(source) == set(exported)
        assert all(torch.equal(source[k], exported[k]) for k in source), name
        config, original = (json.loads((f / "config.json").read_text()) for f in (out, hydra / folder))
        for key in ("vocab_size", "tie_word_embeddings", "eos_token_id", "bos_token_id"):
            assert config[key] == original[key], key
        plain, tok = _plain(out)
        assert len(tok) == len(_plain(hydra / folder)[1])


def test_different_bodies_are_refused(hydra, run_cli, tmp_path):
    from safetensors.torch import load_file, save_file
    changed = tmp_path / "N2"
    changed.mkdir()
    for item in (hydra / "N").iterdir():
        (changed / item.name).write_bytes(item.read_bytes())
    tensors = load_file(str(changed / "model.safetensors"))
    tensors["model.norm.weight"] = tensors["model.norm.weight"] + 1
    save_file(tensors, str(changed / "model.safetensors"), metadata={"format": "pt"})
    code, _, err = run_cli("hydra", "export", "--original", hydra / "O", "--adapted", changed, "--language", "ru",
                           "--out", tmp_path / "H")
    assert code == 1 and "model.norm.weight differs" in err and not (tmp_path / "H").exists()


def test_two_models_reading_the_same_shard_file_share_a_body(hydra, run_cli, tmp_path):
    # Both sides read O's shard: each side needs its own read position in that file.
    code, _, err = run_cli("hydra", "export", "--original", hydra / "O", "--adapted", hydra / "O", "--language", "en",
                           "--out", tmp_path / "H")
    assert code == 0, err
    spec = json.loads((tmp_path / "H" / "hydra.json").read_text())
    assert [v["name"] for v in spec["vocabularies"]] == ["orig", "en"]


# Every architecture Hydra accepts, with its logit step set away from the identity.
ARCHITECTURES = {"llama": {}, "mistral": {}, "qwen2": {}, "qwen3": {}, "gemma": {}, "phi3": {},
                 "cohere": {"logit_scale": 0.37}, "cohere2": {"logit_scale": 0.37},
                 "gemma2": {"final_logit_softcapping": 1.5}, "gemma3_text": {"final_logit_softcapping": 1.5},
                 "granite": {"logits_scaling": 3.0}, "granitemoe": {"logits_scaling": 3.0}}


def _tiny_tokenizer(folder: Path, words: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["<eos>", *(f"w{i}" for i in range(words - 1))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>").save_pretrained(str(folder))


def _arch_pair(root: Path, model_type: str) -> None:
    """O and N: one tiny random body of `model_type`, two sets of large random tables (so that
    scaling and capping change the logits a lot)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.for_model(model_type, vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                                  pad_token_id=0, **ARCHITECTURES[model_type])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    for name in ("O", "N"):
        with torch.no_grad():
            for table in {id(t): t for t in (model.get_input_embeddings().weight,
                                             model.get_output_embeddings().weight)}.values():
                table.normal_(std=3.0)
        model.save_pretrained(str(root / name))
        _tiny_tokenizer(root / name, 96)


def test_every_accepted_architecture_is_checked():
    from lingraft.propagate.hydra.logits import SUPPORTED
    assert set(ARCHITECTURES) == SUPPORTED


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_hydra_logits_equal_the_plain_models_for_every_accepted_architecture(model_type, tmp_path, run_cli):
    from transformers import AutoModelForCausalLM

    from lingraft.propagate.hydra.model import HydraForCausalLM, namespaced
    _arch_pair(tmp_path, model_type)
    code, _, err = run_cli("hydra", "export", "--original", tmp_path / "O", "--adapted", tmp_path / "N",
                           "--language", "new", "--out", tmp_path / "H")
    assert code == 0, err
    hydra = HydraForCausalLM.from_pretrained(tmp_path / "H", dtype=torch.float32)
    ids = [5, 17, 3, 88, 41, 9, 60, 2]
    for head, folder in (("orig", "O"), ("new", "N")):
        plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / folder), dtype=torch.float32).eval()
        expected = plain(torch.tensor([ids])).logits
        got, _ = hydra(torch.tensor([namespaced(ids, hydra.spec.vocabulary(head))]), head=head)
        assert expected.abs().max() > 1.0 and torch.allclose(got, expected, atol=1e-5), (model_type, head)


def test_an_architecture_that_may_process_logits_otherwise_is_refused(tmp_path, run_cli):
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.for_model("hyperclovax", vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    model = AutoModelForCausalLM.from_config(config)
    for name in ("O", "N"):
        model.save_pretrained(str(tmp_path / name))
        _tiny_tokenizer(tmp_path / name, 96)
    code, _, err = run_cli("hydra", "export", "--original", tmp_path / "O", "--adapted", tmp_path / "N",
                           "--language", "new", "--out", tmp_path / "H")
    assert code == 1 and "do not support model_type='hyperclovax'" in err and not (tmp_path / "H").exists()


def test_models_whose_logit_steps_differ_are_refused(tmp_path, run_cli):
    _arch_pair(tmp_path, "cohere")
    config = json.loads((tmp_path / "N" / "config.json").read_text())
    (tmp_path / "N" / "config.json").write_text(json.dumps({**config, "logit_scale": 0.5}))
    code, _, err = run_cli("hydra", "export", "--original", tmp_path / "O", "--adapted", tmp_path / "N",
                           "--language", "new", "--out", tmp_path / "H")
    assert code == 1 and "process logits differently" in err and not (tmp_path / "H").exists()
