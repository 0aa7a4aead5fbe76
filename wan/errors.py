"""The errors a run reports to its user, and how each becomes one line.

Bad input (``ConfigError``, ``CheckpointError``) is the user's to fix: exit code 2 on the CLI, a 4xx
from the service. A failed run (``NonFiniteLatentError``, ``DistributedRunError``, out of memory, a
write error) exits 1. Every message is one line that names the problem and the fix.
"""

from __future__ import annotations

import re


class ConfigError(ValueError):
    """Bad user input about the task, size, sampling settings or paths (one-line message, exit code 2)."""


class CheckpointError(ValueError):
    """One-line, user-facing: names the file/tensor that is wrong and what to do (CLI exits 2)."""

    def __init__(self, message: str):
        # Library errors are embedded in our messages; keep the whole thing on one line.
        super().__init__(re.sub(r"\s*\n\s*", " ", str(message)).strip())


class NonFiniteLatentError(RuntimeError):
    """NaN or Inf appeared in the latent; names the step and the expert that produced it."""

    def __init__(self, step: int, expert: str):
        super().__init__(f"NaN/Inf in the latent at step {step} ({expert} expert); try another seed or dtype")
        self.step = step
        self.expert = expert


class DistributedRunError(RuntimeError):
    """A collective failed or timed out on this rank: another rank failed or hung. One line, names the rank."""


BAD_INPUT = (ConfigError, CheckpointError)
"""Errors that are the user's input, not the run: exit code 2, HTTP 400."""


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
