"""TokenMap: the sparse new-from-old row contract shared by every initialisation method."""
from __future__ import annotations

import pytest
import torch

from lingraft.errors import LingraftError
from lingraft.vocabulary.token_map import TOKEN_MAP_NAME, TokenMap


def _example() -> TokenMap:
    rows = [{0: 1.0}, {1: 1.0, 2: 3.0}, {}, {4: 2.0}]
    return TokenMap.from_rows(rows, ["kept", "mean", "mean", "aligned"], old_vocab=5)


def test_apply_is_the_sparse_product_with_mean_fallback():
    old = torch.randn(5, 7, dtype=torch.float64)
    new = _example().apply(old)
    assert new.dtype == torch.float64 and new.shape == (4, 7)
    torch.testing.assert_close(new[0], old[0], rtol=0, atol=0)
    torch.testing.assert_close(new[1], 0.25 * old[1] + 0.75 * old[2])
    torch.testing.assert_close(new[2], old.mean(dim=0))       # no source: mean of all old rows
    torch.testing.assert_close(new[3], old[4])                # weights normalised to sum to 1


def test_apply_keeps_dtype_and_accumulates_in_float32():
    old = torch.randn(5, 16).to(torch.bfloat16)
    new = _example().apply(old)
    assert new.dtype == torch.bfloat16
    expected = (0.25 * old[1].float() + 0.75 * old[2].float()).to(torch.bfloat16)
    assert torch.equal(new[1], expected)
    assert torch.equal(new[0], old[0])                        # a kept row is copied bit for bit


def test_provenance_counts_turn_empty_rows_into_fallback():
    counts = _example().provenance_counts()
    assert counts == {"kept": 1, "mean": 1, "aligned": 1, "smoothed": 0, "fallback": 1, "special": 0}
    assert _example().provenance_of(2) == "fallback"
    assert _example().row(1) == pytest.approx({1: 0.25, 2: 0.75})


def test_save_load_roundtrip(tmp_path):
    tmap = _example()
    tmap.save(tmp_path / TOKEN_MAP_NAME)
    loaded = TokenMap.load(tmp_path)                          # a folder means <folder>/token_map.safetensors
    for name in ("indptr", "indices", "weights", "provenance"):
        assert torch.equal(getattr(loaded, name), getattr(tmap, name))
    assert loaded.old_vocab == 5
    old = torch.randn(5, 3)
    assert torch.equal(loaded.apply(old), tmap.apply(old))


def test_saved_bytes_are_the_same_in_every_process(tmp_path):
    """safetensors orders metadata by a per-process hash seed; the saved file must not depend on it."""
    import subprocess
    import sys
    tmap = _example()
    tmap.save(tmp_path / "here.safetensors")
    script = ("import sys, torch; from lingraft.vocabulary.token_map import TokenMap; "
              "TokenMap.load(sys.argv[1]).save(sys.argv[2])")
    for k in range(2):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / "here.safetensors"),
                        str(tmp_path / f"child{k}.safetensors")], check=True)
        assert (tmp_path / f"child{k}.safetensors").read_bytes() == (tmp_path / "here.safetensors").read_bytes()


@pytest.mark.parametrize("rows, provenance, message", [
    ([{0: 1.0}], ["kept", "mean"], "1 rows but 2 provenance"),
    ([{0: 1.0}], ["copied"], "unknown provenance 'copied'"),
    ([{0: -1.0}], ["mean"], "negative"),
    ([{0: 1.0}], ["fallback"], "labelled 'fallback' but has sources"),
    ([{9: 1.0}], ["mean"], "outside [0, 5)"),
])
def test_bad_rows_are_rejected(rows, provenance, message):
    with pytest.raises(LingraftError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        TokenMap.from_rows(rows, provenance, old_vocab=5)


def test_apply_checks_the_table_shape():
    with pytest.raises(LingraftError, match=r"expected an \(5, d\) table"):
        _example().apply(torch.zeros(4, 3))


def test_load_rejects_foreign_and_missing_files(tmp_path):
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(LingraftError, match="not a lingraft token map"):
        TokenMap.load(tmp_path / "other.safetensors")
    with pytest.raises(LingraftError, match="token map not found"):
        TokenMap.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(LingraftError, match="corrupt token map"):
        TokenMap.load(tmp_path / "junk.safetensors")


# -- one source of truth for kept rows: extend/optimize's vocab_map.json (issue 14.4) ---------

def test_mean_map_gives_every_old_id_of_extended_mistral_its_own_row(shared):
    """Byte-fallback pieces (<0x01>...) used to take the row of an ordinary piece with the same byte."""
    from lingraft.vocabulary.token_matching import build_mean_map
    from tests.helpers import base_tokenizer, extended
    base, variant = base_tokenizer(shared, "mistral"), extended(shared, "mistral")
    token_map = build_mean_map(base, variant.tokenizer)
    assert [i for i in range(len(base)) if token_map.row(i) != {i: 1.0}] == []


def test_init_token_map_follows_the_stored_vocab_map(shared, tmp_path):
    from lingraft.vocabulary.init_config import InitConfig
    from lingraft.vocabulary.init_stage import build_token_map
    from lingraft.vocabulary.vocab_map import write_vocab_map
    from tests.helpers import base_tokenizer, optimized
    base, variant = base_tokenizer(shared, "mistral"), optimized(shared, "mistral", 800)
    folder = tmp_path / "optimized"
    variant.tokenizer.save_pretrained(str(folder))
    write_vocab_map(folder, len(base), variant.old_id_of_new_id)
    cfg = InitConfig(model="unused", tokenizer=str(folder), out=str(tmp_path / "out"), method="mean")
    token_map, _ = build_token_map(cfg, base, variant.tokenizer)
    for new_id, old_id in enumerate(variant.old_id_of_new_id):
        if old_id >= 0:
            assert token_map.row(new_id) == {old_id: 1.0}
    shifted = [(i + 1) % len(base) if i >= 0 else i for i in variant.old_id_of_new_id]
    write_vocab_map(folder, len(base), shifted)
    with pytest.raises(LingraftError, match="vocab_map.json: new id 0 .* made for another base tokenizer"):
        build_token_map(cfg, base, variant.tokenizer)
