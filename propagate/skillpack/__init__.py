"""Skill packs (GraftLLM): compressed tuned-minus-base deltas, created, applied, verified."""
