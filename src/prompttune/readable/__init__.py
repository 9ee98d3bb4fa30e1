"""Soft prompts made readable (issue 15, item 3), and hard prompts found by gradients.

- ``vocab.py``: the vocabulary as points (nearest tokens by cosine, embedding norms; ``all`` / ``readable``);
- ``soft.py``: a task's soft prompt per template slot; the same task with other embeddings, or as hard text;
- ``inspection.py``: ``inspect_artifact`` (`prompttune inspect`): nearest tokens, norms, projected accuracy;
- ``discrete.py``: what the token searches share (batches, selection rows that keep the best, the result);
- ``pez.py``: PEZ (Wen et al. 2023), projected gradient descent over tokens;
- ``gcg.py``: greedy coordinate gradient (Zou et al. 2023, after AutoPrompt): swaps ranked by the gradient, tried;
- ``harden.py``: ``harden`` (`prompttune harden`): nearest, pez or gcg, written as a template YAML (``output.py``).
"""

from prompttune.readable.gcg import GcgConfig
from prompttune.readable.harden import harden, search_config
from prompttune.readable.inspection import inspect_artifact
from prompttune.readable.pez import PezConfig

__all__ = ["GcgConfig", "PezConfig", "harden", "inspect_artifact", "search_config"]
