"""The chunk-likelihood term of `lingraft train`'s distillation (train/distill.py), on hand-made logits."""
from __future__ import annotations

import math

import pytest
import torch

from lingraft.train.distill import chunk_kl_at_pairs

# Teacher (old) vocabulary: 4 tokens. Model (new) vocabulary: those 4 and 2 new ones (4, 5).
# The model reads [x, 5, 1]; the teacher reads the same bytes as [x, 2, 3, 1]: new token 5 is
# old tokens 2 and 3. Pairs (model position, teacher position) after the same bytes:
# (0, 0), (1, 2), (2, 3). Chunks: model position 0 predicts 5 = teacher's 2 then 3;
# position 1 predicts 1 = teacher's 1.
LABELS = torch.tensor([[5, 1, -100]])
TEACHER_IDS = torch.tensor([[0, 2, 3, 1]])
TEACHER_POSITIONS = torch.arange(4).unsqueeze(0)
PAIRS = torch.tensor([[[0, 0], [1, 2], [2, 3]]])


def teacher_chunk_log_probs(teacher: torch.Tensor) -> list[float]:
    logp = torch.log_softmax(teacher[0], -1)
    return [float(logp[0, 2] + logp[1, 3]), float(logp[2, 1])]


def bernoulli_kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def model_logits_with(log_probs: list[float]) -> torch.Tensor:
    """Logits (1, 3, 6) under which position 0 gives token 5 and position 1 token 1 those log-probabilities."""
    logits = torch.zeros(1, 3, 6)
    for position, (token, log_p) in enumerate(zip((5, 1), log_probs)):
        # one token at log_p, the other five share the rest evenly
        rest = math.log((1 - math.exp(log_p)) / 5)
        logits[0, position] = rest
        logits[0, position, token] = log_p
    return logits


def test_matching_likelihoods_give_zero_and_others_the_bernoulli_kl():
    teacher = torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(0))
    target = teacher_chunk_log_probs(teacher)
    same = chunk_kl_at_pairs(model_logits_with(target), LABELS, teacher, TEACHER_IDS, TEACHER_POSITIONS, PAIRS, 1.0)
    assert same.item() == pytest.approx(0.0, abs=1e-5)
    model = [math.log(0.3), math.log(0.6)]
    got = chunk_kl_at_pairs(model_logits_with(model), LABELS, teacher, TEACHER_IDS, TEACHER_POSITIONS, PAIRS, 4.0)
    want = sum(bernoulli_kl(math.exp(t), math.exp(m)) for t, m in zip(target, model)) / 4.0
    assert got.item() == pytest.approx(want, rel=1e-4)


def test_the_gradient_reaches_the_new_token_and_spares_unpaired_positions():
    teacher = torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(1))
    logits = model_logits_with([math.log(0.01), math.log(0.5)]).requires_grad_(True)
    chunk_kl_at_pairs(logits, LABELS, teacher, TEACHER_IDS, TEACHER_POSITIONS, PAIRS, 1.0).backward()
    assert logits.grad[0, 0, 5] != 0            # the new token's logit: the shared-token KL never touches it
    assert logits.grad[0, 2].abs().sum() == 0   # the last pair starts no chunk


def test_no_chunk_across_documents_or_between_distant_pairs():
    teacher = torch.randn(1, 4, 4)
    logits = torch.randn(1, 3, 6, requires_grad=True)
    restarted = torch.tensor([[0, 1, 0, 1]])    # the teacher's tokens 2.. belong to another document
    across = chunk_kl_at_pairs(logits, LABELS, teacher, TEACHER_IDS, restarted, PAIRS[:, :2], 1.0)
    gapped = torch.tensor([[[0, 0], [2, 3], [-1, -1]]])   # model positions 0 and 2: not one token apart
    apart = chunk_kl_at_pairs(logits, LABELS, teacher, TEACHER_IDS, TEACHER_POSITIONS, gapped, 1.0)
    assert across.item() == 0.0 and apart.item() == 0.0
