"""What the launcher's environment says about this process, read without importing torch (the CLI asks)."""

from __future__ import annotations

import os

from prompttune.core.errors import PromptTuneError

MAX_WORLD = 1024  # processes in one run, at most


def env_world() -> int:
    """WORLD_SIZE as the launcher set it (1 without a launcher); checked."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(raw)
    except ValueError:
        raise PromptTuneError(f"WORLD_SIZE={raw!r}: not a whole number; start through torchrun.") from None
    if not 1 <= world <= MAX_WORLD:
        raise PromptTuneError(f"WORLD_SIZE={world}: must be between 1 and {MAX_WORLD}.")
    return world


def is_main_process() -> bool:
    """Whether this process writes and reports (rank 0, or no launcher)."""
    return os.environ.get("RANK", "0") == "0"
