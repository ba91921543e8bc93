"""Learned Embedding Propagation: the math (lep_math) and the streaming propagate stage."""
