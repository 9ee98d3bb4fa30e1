"""Searched arms of `prompttune compare`: readable prompts found on each cell's rows, scored like every arm.

- ``base``: ``SearchedArm`` (settings, checks, ``find``) and the ``SEARCHED`` registry;
- ``optimized``: an optimizer of programs (bootstrap, random-search, mipro) picks instruction and demos;
- ``pez``: projected gradient descent picks the template's soft slots' tokens (``harden --method pez``).
"""

from prompttune.compare.searched import optimized, pez  # noqa: F401 - each registers its arm
from prompttune.compare.searched.base import KIND, SEARCHED, SearchContext, SearchedArm

__all__ = ["KIND", "SEARCHED", "SearchContext", "SearchedArm"]
