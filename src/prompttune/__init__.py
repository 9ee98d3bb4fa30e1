"""prompttune: adapt a frozen language model to many tasks through prompts.

The public API: ``load`` an artifact, ``train`` one from files, or build a task (``PromptTask`` for label
words, ``HeadTask`` for a trained head, ``ProbeTask`` for a probe of a decoder's layers) on a ``Backbone`` and
``fit`` / ``evaluate`` / ``predict`` / ``save`` it.
Names are imported on first use, so ``import prompttune`` (and ``prompttune --help``) stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "HeadTask": "prompttune.api",
    "Prediction": "prompttune.api",
    "ProbeTask": "prompttune.api",
    "PromptTask": "prompttune.api",
    "Task": "prompttune.api",
    "load": "prompttune.api",
    "train_from_file": "prompttune.api",
    "Backbone": "prompttune.core.backbone",
    "ArtifactError": "prompttune.core.errors",
    "DataError": "prompttune.core.errors",
    "ModelError": "prompttune.core.errors",
    "PromptTuneError": "prompttune.core.errors",
    "TemplateError": "prompttune.core.errors",
    "Callback": "prompttune.train",
    "TrainConfig": "prompttune.train",
    "TrainResult": "prompttune.train",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'prompttune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
