"""Soft prompts made readable (issue 15, item 3), and hard prompts found by gradients.

- ``vocab.py``: the vocabulary as points (nearest tokens by cosine, embedding norms; ``all`` / ``readable``);
- ``soft.py``: a task's soft prompt per template slot; the same task with other embeddings, or as hard text;
- ``inspection.py``: ``inspect_artifact`` (`prompttune inspect`): nearest tokens, norms, projected accuracy;
- ``pez.py``: PEZ (Wen et al. 2023), projected gradient descent over tokens;
- ``harden.py``: ``harden`` (`prompttune harden`): nearest or pez, written as a template YAML (``output.py``).
"""

from prompttune.readable.harden import harden
from prompttune.readable.inspection import inspect_artifact
from prompttune.readable.pez import PezConfig

__all__ = ["PezConfig", "harden", "inspect_artifact"]
