"""Hydra models: one body, several input vocabularies and heads."""
