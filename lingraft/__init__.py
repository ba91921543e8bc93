"""lingraft: graft a new language into open LLMs."""
__version__ = "0.1.0"
