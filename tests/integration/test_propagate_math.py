"""LEP math on synthetic tables with a known map: overlap and conversion recover it, swap is the identity."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lingraft.errors import LingraftError
from lingraft.propagate.lep.compat import check_compatible
from lingraft.propagate.lep.lep_math import (apply_map, dense_blocks, fit_linear_map, mapped_rows, propagate_table,
                                selection_map, token_map_blocks)
from lingraft.vocabulary.token_map import TokenMap

OLD, NEW, D = 300, 220, 24


def random_token_map(seed: int = 0) -> TokenMap:
    """Each new token the (weighted) mean of 1-4 old tokens; a few kept, a few without source."""
    g = torch.Generator().manual_seed(seed)
    rows, labels = [], []
    for k in range(NEW):
        if k % 50 == 7:
            rows.append({}), labels.append("fallback")
        elif k % 5 == 0:
            rows.append({int(torch.randint(OLD, (1,), generator=g)): 1.0}), labels.append("kept")
        else:
            ids = torch.randint(OLD, (int(torch.randint(2, 5, (1,), generator=g)),), generator=g).tolist()
            rows.append({i: float(torch.rand(1, generator=g)) + 0.1 for i in ids}), labels.append("mean")
    return TokenMap.from_rows(rows, labels, old_vocab=OLD)


@pytest.fixture(scope="module")
def tables():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(OLD, D, generator=g, dtype=torch.float64)
    true_map = torch.eye(D, dtype=torch.float64) + 0.3 * torch.randn(D, D, generator=g, dtype=torch.float64)
    adapted = torch.randn(NEW + 4, D, generator=g, dtype=torch.float64)    # padded past the token map
    return SimpleNamespace(base=base, instruct=base @ true_map, true_map=true_map, adapted=adapted)


def test_mapped_rows_is_the_token_map_product():
    t = random_token_map()
    table = torch.randn(OLD, D).to(torch.bfloat16)
    expected = t.apply(table.to(torch.float64))
    has_source = t.provenance != 4
    got = torch.cat([mapped_rows(t, table, s, min(s + 64, NEW)) for s in range(0, NEW, 64)])
    assert torch.allclose(got[has_source], expected[has_source], atol=1e-12)
    assert torch.equal(got[~has_source], torch.zeros_like(got[~has_source]))


def test_conversion_recovers_the_true_map(tables):
    t = random_token_map()
    out, fit = propagate_table("conversion", tables.adapted, torch.float64, t, tables.base, tables.instruct)
    assert (fit.map - tables.true_map).abs().max() < 1e-6
    assert fit.relative_residual < 1e-10 and fit.rank == D
    assert fit.rows == int((t.provenance != 4).sum())        # fallback rows are not fitted on
    assert torch.allclose(out, tables.adapted @ tables.true_map, atol=1e-6)


def test_overlap_recovers_the_true_map(tables):
    shared_old = torch.arange(0, OLD, 3)
    pick = selection_map(torch.arange(shared_old.numel()), shared_old, OLD)
    out, fit = propagate_table("overlap", tables.adapted, torch.float64, pick, tables.base, tables.instruct)
    assert (fit.map - tables.true_map).abs().max() < 1e-6 and fit.rows == shared_old.numel()
    assert torch.allclose(out, tables.adapted @ tables.true_map, atol=1e-6)


def test_small_blocks_give_the_same_fit(tables):
    t = random_token_map()
    whole = fit_linear_map(token_map_blocks(t, tables.base, tables.instruct))
    blocked = fit_linear_map(token_map_blocks(t, tables.base, tables.instruct, block_rows=17))
    assert torch.allclose(whole.map, blocked.map, atol=1e-10)


def test_noisy_fit_reports_its_residual(tables):
    g = torch.Generator().manual_seed(2)
    noisy = tables.instruct + 0.1 * torch.randn(tables.instruct.shape, generator=g, dtype=torch.float64)
    fit = fit_linear_map(dense_blocks(tables.base, noisy))
    direct = torch.linalg.lstsq(tables.base, noisy).solution    # the textbook solution, for reference
    assert torch.allclose(fit.map, direct, atol=1e-8)
    expected = float(torch.linalg.matrix_norm(tables.base @ direct - noisy) / torch.linalg.matrix_norm(noisy))
    assert fit.relative_residual == pytest.approx(expected, rel=1e-8) and 0.01 < expected < 0.5


def test_swap_is_the_identity(tables):
    bf16 = tables.adapted.to(torch.bfloat16)
    out, fit = propagate_table("swap", bf16, torch.bfloat16)
    assert fit is None and torch.equal(out, bf16)


def test_identical_base_and_instruct_give_the_adapted_tables(tables):
    out, fit = propagate_table("conversion", tables.adapted, torch.float64, random_token_map(), tables.base,
                               tables.base)
    assert torch.allclose(fit.map, torch.eye(D, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(out, tables.adapted, atol=1e-9)


def test_too_few_rows_give_the_minimum_norm_map(tables):
    few = tables.base[:D // 2]                  # fewer rows than dimensions: underdetermined
    fit = fit_linear_map(dense_blocks(few, tables.instruct[:D // 2]))
    assert fit.rank == D // 2 and fit.relative_residual < 1e-8
    assert torch.allclose(fit.map, torch.linalg.pinv(few) @ tables.instruct[:D // 2], atol=1e-8)


def test_apply_map_casts_and_checks_width(tables):
    out = apply_map(tables.adapted.to(torch.bfloat16), tables.true_map, torch.float32, block_rows=7)
    assert out.dtype == torch.float32 and out.shape == tables.adapted.shape
    with pytest.raises(LingraftError, match="width"):
        apply_map(torch.zeros(3, D + 1), tables.true_map, torch.float32)


def test_bad_inputs_are_refused(tables):
    with pytest.raises(LingraftError, match="no rows"):
        fit_linear_map(dense_blocks(torch.zeros(0, D), torch.zeros(0, D)))
    with pytest.raises(LingraftError, match="old tokens"):
        fit_linear_map(token_map_blocks(random_token_map(), tables.base[:10], tables.instruct))
    with pytest.raises(LingraftError, match="unknown propagation method"):
        propagate_table("average", tables.adapted, torch.float32)


def test_compatibility_lists_every_mismatch():
    def cfg(**kw):
        base = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=32, num_hidden_layers=2,
                    tie_word_embeddings=False)
        return SimpleNamespace(**{**base, **kw})
    check_compatible(cfg(), cfg(), cfg(), ("B", "A", "I"))
    with pytest.raises(LingraftError) as err:
        check_compatible(cfg(), cfg(hidden_size=64), cfg(num_hidden_layers=3, tie_word_embeddings=True),
                         ("B", "A", "I"))
    message = str(err.value)
    assert "layer count: base 2 vs instruct 3" in message and "tied embeddings" in message
    assert "hidden size: base 32 vs adapted 64" in message
