"""Bits per character: kept here for the stages that import it; the code lives in evaluation.bpc."""
from evaluation.bpc import BpcResult, bits_per_character, start_token_id

__all__ = ["BpcResult", "bits_per_character", "start_token_id"]
