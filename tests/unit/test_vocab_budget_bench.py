"""bench/vocab_budget.py: token counts over a mix, and how a smaller new-token budget leaves fewer rare rows."""
from __future__ import annotations

from lingraft.vocabulary.extend import extend
from tests.conftest import REPO
from tests.helpers import (base_tokenizer, english, extended, load_script, n_tokens, new_tokenizer, russian,
                           ud_sentences)


def load_bench():
    return load_script(REPO / "bench" / "vocab_budget.py")


def test_budgets_parse_with_all_meaning_every_acceptable_token():
    assert load_bench().parse_budgets("4000,all,6000") == [4000, None, 6000]


def test_a_smaller_budget_leaves_fewer_held_out_positions_to_rare_tokens(shared):
    bench = load_bench()
    base = base_tokenizer(shared, "mistral")
    mix, held_out = list(russian(shared)), list(ud_sentences(shared)[:500])
    shares = {}
    for name, variant in {"small": extend(base, new_tokenizer(shared, "mistral"), 300, english(shared)[:300]),
                          "full": extended(shared, "mistral")}.items():
        tok = variant.tokenizer
        counts = bench.token_counts(tok, mix, len(tok))
        assert counts.sum() == n_tokens(tok, mix)          # every position counted once
        shares[name] = bench.rare_shares(tok, len(base), counts, held_out, rare=100)
        assert all(0.0 <= v <= 1.0 for v in shares[name].values())
    # The small budget keeps the new BPE's first (most frequent) tokens: fewer of them are rare in the
    # mix, and fewer held-out positions fall on a rare one.
    assert shares["small"]["new_tokens_rare"] < shares["full"]["new_tokens_rare"]
    assert shares["small"]["heldout_positions_rare"] < shares["full"]["heldout_positions_rare"]
    assert shares["full"]["heldout_positions_rare"] > 0.0
