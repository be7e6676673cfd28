"""Fault injection for the reliability suite (tests/test_faults.py), off unless asked for.

RLHF_FAULT="POINT:N" makes this process SIGKILL itself the N-th time it reaches POINT:
  save   inside save_checkpoint, after the weights are written to the temporary folder and
         before it is renamed into place (a crash mid-save)
  step   after an optimiser step of the SFT / reward-model loop, or after a PPO iteration
"""
from __future__ import annotations

import os
import signal

_reached: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get("RLHF_FAULT", "")
    if not spec or spec.split(":")[0] != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(spec.split(":")[1]):
        os.kill(os.getpid(), signal.SIGKILL)
