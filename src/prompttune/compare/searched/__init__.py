"""Searched arms of `prompttune compare`: readable prompts found on each cell's rows, scored like every arm.

- ``base``: ``SearchedArm`` (settings, checks, ``find``) and the ``SEARCHED`` registry;
- ``optimized``: an optimizer of programs (bootstrap, random-search, mipro) picks instruction and demos;
- ``tokens``: ``pez`` (projected gradient descent) and ``gcg`` (swaps ranked by the gradient) pick the template's
  soft slots' tokens (``harden --method pez|gcg``).
"""

from prompttune.compare.searched import optimized, tokens  # noqa: F401 - each registers its arms
from prompttune.compare.searched.base import KIND, SEARCHED, SearchContext, SearchedArm

__all__ = ["KIND", "SEARCHED", "SearchContext", "SearchedArm"]
