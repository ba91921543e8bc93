"""Token alignment and the distillation math on small hand-made tensors (no model files)."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from lingraft.errors import LingraftError
from lingraft.vocabulary.distill_init import DistillRuntime
from lingraft.vocabulary.distill_math import (
    FitData,
    HeadFeatures,
    HeadMap,
    Passage,
    RowSplit,
    TeacherStates,
    fit_loss,
    fit_output_rows,
    lookup,
    mean_fit_loss,
    prepare_fit,
    unit_direction,
)
from lingraft.vocabulary.head_map_file import load_head_map, save_head_map
from lingraft.vocabulary.token_alignment import aligned_positions


def test_aligned_positions_are_where_both_tokenisations_end_a_token():
    # text "abcdef": old pieces a|bc|d|ef, new pieces abc|def; id k stands for lengths[k] bytes
    lengths_old = np.array([0, 1, 2, 1, 2])        # 0 = start token
    lengths_new = np.array([0, 3, 3])
    old = np.array([0, 1, 2, 3, 4])
    new = np.array([0, 1, 2])
    old_pos, new_pos = aligned_positions(old, new, lengths_old, lengths_new)
    assert old_pos.tolist() == [0, 2, 4] and new_pos.tolist() == [0, 1, 2]


def test_zero_length_markup_aligns_on_the_last_token_before_the_text():
    lengths = np.array([0, 0, 2, 1])               # start, a special marker, "ab", "c"
    old_pos, new_pos = aligned_positions(np.array([0, 1, 2, 3]), np.array([0, 2, 3]), lengths, lengths)
    assert old_pos.tolist() == [1, 2, 3] and new_pos.tolist() == [0, 1, 2]


def test_lookup_takes_learnt_rows_only_for_trainable_ids():
    table = torch.arange(12.0).reshape(4, 3)
    split = RowSplit.from_mask(torch.tensor([False, True, False, True]))
    rows = torch.full((2, 3), -1.0)
    out = lookup(table, rows, split, torch.tensor([[0, 1, 3, 2]]))
    assert torch.equal(out[0, 0], table[0]) and torch.equal(out[0, 2], rows[1])
    assert torch.equal(out[0, 1], rows[0]) and torch.equal(out[0, 3], table[2])


def test_fit_loss_equals_full_softmax_cross_entropy():
    torch.manual_seed(0)
    hidden, head = torch.randn(20, 4), torch.randn(6, 4)
    targets = torch.randint(0, 6, (20,))
    split = RowSplit.from_mask(torch.tensor([False, False, False, True, True, True]))
    data = prepare_fit(hidden, targets, head, split)
    got = fit_loss(data, head[split.ids], torch.arange(20))
    want = torch.nn.functional.cross_entropy(hidden @ head.T, targets)
    assert torch.allclose(got, want, atol=1e-5)


def test_head_fit_lowers_cross_entropy_and_keeps_the_best_held_out_epoch():
    torch.manual_seed(0)
    true_head = torch.randn(8, 5)
    hidden = torch.randn(600, 5) * 2
    targets = torch.distributions.Categorical(logits=hidden @ true_head.T).sample()
    split = RowSplit.from_mask(torch.arange(8) >= 5)
    head = true_head.clone()
    head[split.ids] = 0.0                                   # the new rows start uninformed
    data = prepare_fit(hidden[:540], targets[:540], head, split)
    held_out = prepare_fit(hidden[540:], targets[540:], head, split)
    # the first piece's row is a noisy copy of the truth; the map has to find the rest
    features = HeadFeatures(first=true_head[split.ids] + 0.5 * torch.randn(3, 5), mean=torch.zeros(3, 5),
                            unit=unit_direction(hidden))
    curve = []
    fit = fit_output_rows(data, held_out, features, epochs=20, lr=0.05, batch_size=100, seed=0,
                          on_epoch=lambda e, loss, held: curve.append(held))
    everything = torch.arange(540)
    before = float(fit_loss(data, features.first, everything))
    after = float(fit_loss(data, fit.rows, everything))
    oracle = float(fit_loss(data, true_head[split.ids], everything))
    assert after < before and after <= oracle + 0.1
    assert fit.held_out_best < fit.held_out_start and fit.held_out_best == min(curve)
    assert curve[fit.best_epoch - 1] == fit.held_out_best
    # rows already better than any epoch (the truth itself) are kept: an epoch must beat them
    kept = fit_output_rows(data, held_out, features, epochs=2, lr=0.05, batch_size=100, seed=0,
                           incumbent=true_head[split.ids])
    assert kept.best_epoch == 0 and torch.equal(kept.rows, true_head[split.ids])
    assert kept.held_out_best == kept.held_out_start
    # bf16 training steps land near the fp32 fit, and the held-out judgement stays fp32
    bf16 = fit_output_rows(data, held_out, features, epochs=20, lr=0.05, batch_size=100, seed=0,
                           autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert bf16.held_out_best == pytest.approx(fit.held_out_best, rel=0.02)
    assert bf16.held_out_best == mean_fit_loss(held_out, bf16.rows) and bf16.rows.dtype == torch.float32
    nothing_held = FitData(hidden=hidden[:0], target_local=targets[:0], frozen_lse=hidden[:0, 0],
                           frozen_target=hidden[:0, 0])
    with pytest.raises(ValueError, match="no held-out positions"):
        fit_output_rows(data, nothing_held, features, epochs=1, lr=0.05, batch_size=100, seed=0)


def test_a_fitted_map_is_stored_and_a_warm_start_begins_where_it_ended(tmp_path):
    torch.manual_seed(0)
    hidden, head = torch.randn(300, 5), torch.randn(8, 5)
    targets = torch.randint(0, 8, (300,))
    split = RowSplit.from_mask(torch.arange(8) >= 5)
    data, held_out = prepare_fit(hidden[:250], targets[:250], head, split), prepare_fit(hidden[250:], targets[250:],
                                                                                       head, split)
    features = HeadFeatures(first=torch.randn(3, 5), mean=torch.randn(3, 5), unit=unit_direction(hidden),
                            input=torch.randn(3, 5))
    fit = fit_output_rows(data, held_out, features, epochs=4, lr=0.05, batch_size=50, seed=0)
    path = save_head_map(fit.state, split.ids, tmp_path / "head_map.safetensors")
    state = load_head_map(path, split.ids)
    restored = HeadMap(features)
    restored.load_state_dict(state)
    assert torch.allclose(restored.rows(), fit.rows)
    # a warm start that cannot move (lr ~ 0) starts, and stays, at the stored fit's held-out loss
    warm = fit_output_rows(data, held_out, features, epochs=1, lr=1e-12, batch_size=50, seed=0, start_map=state)
    assert warm.held_out_start == pytest.approx(fit.held_out_best, rel=1e-6)
    kept = fit_output_rows(data, held_out, features, epochs=1, lr=1e-12, batch_size=50, seed=0, incumbent=fit.rows)
    assert kept.best_epoch == 0 and kept.state is None      # the incumbent won: no map of this fit made it
    with pytest.raises(LingraftError, match="covers other tokens"):
        load_head_map(path, split.ids[:2])
    (tmp_path / "other.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LingraftError, match="corrupt head map"):
        load_head_map(tmp_path / "other.safetensors", split.ids)


def test_the_head_fit_rate_warms_up_linearly_then_decays_on_a_cosine_to_zero():
    from lingraft.train.optim import lr_factor
    warmup_cosine = partial(lr_factor, min_ratio=0.0)      # as fit_output_rows schedules it
    factors = [warmup_cosine(step, 4, 20) for step in range(21)]
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a > b for a, b in zip(factors[4:], factors[5:])) and factors[20] == pytest.approx(0.0)
    assert warmup_cosine(0, 0, 10) == 1.0 and warmup_cosine(5, 0, 10) == pytest.approx(0.5)


def test_unit_direction_turns_a_scalar_into_a_logit_offset():
    hidden = torch.randn(50, 4) + 3.0
    v = unit_direction(hidden)
    assert torch.allclose(hidden @ v, torch.ones(50), atol=0.5)


def test_a_repeated_window_keeps_its_length_and_repeats_its_first_half():
    from lingraft.vocabulary.distill_init import repeated_half
    window = "Мороз и солнце; день чудесный! Еще ты дремлешь, друг прелестный"
    text = repeated_half(window)
    first, second = text.split("\n\n")
    assert first == second and window.startswith(first) and abs(len(text) - len(window)) <= 2
    assert repeated_half("безпробелов") == "безпр\n\nбезпр"


def test_distill_runtime_is_fp32_on_cpu_unless_told_and_refuses_a_missing_gpu():
    assert DistillRuntime.resolve("cpu", "auto") == DistillRuntime(torch.device("cpu"), torch.float32)
    bf16 = DistillRuntime.resolve("cpu", "bf16")
    assert bf16.dtype == torch.bfloat16
    with bf16.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with DistillRuntime.resolve("cpu", "fp32").autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(LingraftError, match="no CUDA device"):
            DistillRuntime.resolve("cuda", "auto")


def test_held_out_loss_in_chunks_is_the_mean_over_every_position():
    from lingraft.vocabulary.distill_math import mean_fit_loss
    torch.manual_seed(1)
    head, hidden, targets = torch.randn(6, 4), torch.randn(37, 4), torch.randint(0, 6, (37,))
    split = RowSplit.from_mask(torch.arange(6) >= 3)
    data = prepare_fit(hidden, targets, head, split)
    whole = float(fit_loss(data, head[split.ids], torch.arange(37)))
    assert abs(mean_fit_loss(data, head[split.ids], chunk=5) - whole) < 1e-5


def test_window_draw_holds_out_whole_windows_no_fit_reads(tmp_path):
    import json

    from lingraft.vocabulary.distill_init import WindowSample
    corpus = tmp_path / "corpus.jsonl"      # one window per document, each starting with its number
    corpus.write_text("".join(json.dumps({"text": f"{i:03d} окно и ещё слова"}) + "\n" for i in range(60)),
                      encoding="utf-8")
    sample = WindowSample([str(corpus)], "text", count=20, chars=400, copy_share=0.5, seed=3)
    draw = sample.draw()
    assert len(draw.fit) == 20 and len(draw.held_out) == 2
    assert not {w[:3] for w in draw.fit} & {w[:3] for w in draw.held_out}
    assert sum("\n\n" in w for w in draw.held_out) == 1             # the copy share applies to each part
    # the fit windows are the same whatever is held out; a small corpus gives up fit windows, not held-out ones
    assert WindowSample([str(corpus)], "text", 20, 400, 0.5, 3, held_out_share=0.5).draw().fit == draw.fit
    small = WindowSample([str(corpus)], "text", count=60, chars=400, copy_share=0.0, seed=3).draw()
    assert (len(small.fit), len(small.held_out)) == (54, 6)
    assert not {w[:3] for w in small.fit} & {w[:3] for w in small.held_out}
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "одно окно"}) + "\n", encoding="utf-8")
    with pytest.raises(LingraftError, match="at least 2"):
        WindowSample([str(one)], "text", 8, 400, 0.5, 0).draw()


def test_teacher_states_are_computed_once_per_passage_and_kept_within_their_budget():
    torch.manual_seed(0)
    table = torch.randn(10, 4)
    calls = []

    def body(embeds: torch.Tensor) -> torch.Tensor:     # a causal stand-in: running sums of the inputs
        calls.append(embeds.shape[0])
        return embeds.cumsum(dim=1)

    passages = [Passage(torch.tensor(ids), torch.tensor(ids[:2]), torch.tensor(pos), torch.tensor([0, 1]))
                for ids, pos in (([1, 2, 3], [0, 2]), ([4, 5], [1]), ([6, 7, 8, 9], [1, 3]))]
    expected = [table[p.old_ids].cumsum(0)[p.old_pos] for p in passages]
    kept = TeacherStates(body, table, passages, max_bytes=1 << 20)
    first = kept([2, 0])
    again = kept([0, 1, 2])
    assert calls == [2, 1] and kept.passes == 3 and len(kept.kept) == 3
    for got, i in zip(first + again, [2, 0, 0, 1, 2]):
        torch.testing.assert_close(got, expected[i])
    # no budget: nothing is kept and every read is a teacher pass, with the same states
    unkept = TeacherStates(body, table, passages, max_bytes=0)
    for _ in range(2):
        for got, want in zip(unkept([0, 1, 2]), expected):
            torch.testing.assert_close(got, want)
    assert unkept.passes == 6 and not unkept.kept and unkept.kept_bytes == 0
