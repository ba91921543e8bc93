"""`python -m tests.integration.calibrate_stall CONFIG`: `lingraft calibrate` whose second generation batch never
returns, so a test can SIGKILL it mid-generation at a known point (the first batch durable)."""
from __future__ import annotations

import sys
import time

from lingraft.propagate.calibrate import generate as calibrate_generate

_answer = calibrate_generate.HFBackend.answer
_calls = 0


def _stalling_answer(self, prompts, max_new_tokens):
    global _calls
    _calls += 1
    answers = _answer(self, prompts, max_new_tokens)
    if _calls >= 2:
        time.sleep(3600)    # answers computed but not yet written: the kill lands here
    return answers


if __name__ == "__main__":
    calibrate_generate.HFBackend.answer = _stalling_answer
    from lingraft.cli import main
    sys.exit(main(["calibrate", "--config", sys.argv[1]]))
