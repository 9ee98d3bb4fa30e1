"""Rows run over a constant prefix held once, not copied into every row's keys/values.

A task's constant prefix (system text, demos, soft tokens) is cached as keys/values; transformers' own path
expands it over the batch, so each row's attention reads its own copy and a batch holds rows x prefix keys. Here
the rows' real tokens run packed as one sequence (``packed.py``: one fused attention call per task over its
prefix and its rows, no padding), or, for rows continuing a cache of their own, as two softmax parts merged by
log-sum-exp (``cascade.py``, over ``flash.py``'s fused kernel). Used by the server's mixed batches, the label-word
scorer at inference and programs' option scoring: ``run_rows`` is the one entry point
(``applies``: whether a backbone takes it; ``run_over`` / ``holds_once``: one task's rows over its prefix).
"""

from prompttune.shared_prefix.cascade import applies, run_rows
from prompttune.shared_prefix.one_prefix import holds_once, run_over

__all__ = ["applies", "holds_once", "run_over", "run_rows"]
