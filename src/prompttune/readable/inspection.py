"""`prompttune inspect`: what a soft prompt's virtual tokens are near in the vocabulary, and what the prompt
scores when each is replaced by its nearest token.

Per virtual token: its K nearest vocabulary tokens by cosine (text, cosine, Euclidean distance), its L2 norm
and where that norm falls among the vocabulary embeddings' norms. With labelled rows: the soft prompt's
accuracy (with its calibration, as ``prompttune eval`` scores it) beside the accuracy of its nearest-token
projection (every virtual token's embedding replaced by its nearest token's, over every non-special token;
no calibration). Khashabi et al. (2022) found such projections say little about what the prompt does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from prompttune.core.backbone import Backbone
from prompttune.core.data import load_rows
from prompttune.core.errors import PromptTuneError
from prompttune.readable.soft import accuracy, load_prompt_task, slot_texts, soft_tables, with_tables
from prompttune.readable.vocab import Vocabulary, norm_stats, percentile

MAX_TOP = 100


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise PromptTuneError(f"--limit {limit}: must be at least 1 (or leave it out for every row).")


def inspect_artifact(
    path: str | Path,
    top: int = 5,
    data: str | Path | None = None,
    limit: int | None = None,
    backbone: Backbone | str | None = None,
    dtype: str | None = None,
    device: str | None = None,
) -> dict:
    """A JSON-able report: per virtual token its nearest tokens and norm; with ``data``, the two accuracies."""
    if not 1 <= top <= MAX_TOP:
        raise PromptTuneError(f"--top {top}: must be 1-{MAX_TOP}.")
    check_limit(limit)
    if limit is not None and data is None:
        raise PromptTuneError("--limit: applies to --data rows; give --data FILE too.")
    rows = load_rows(data).limit(limit) if data is not None else None  # a bad file is an error before loading
    task = load_prompt_task(path, backbone, dtype=dtype, device=device)
    tables = soft_tables(task, str(path))
    bb = task.backbone
    vocab = Vocabulary.of(bb, "all")
    stats, norms = norm_stats(bb)
    tokens, nearest_ids = [], {}
    position = 0
    for slot_index, table in sorted(tables.items()):
        ids, cos, dist = vocab.nearest(table, top)
        nearest_ids[slot_index] = ids[:, 0].tolist()
        for j in range(table.shape[0]):
            norm = float(table[j].norm())
            tokens.append(
                {
                    "position": position,
                    "slot": slot_index,
                    "index_in_slot": j,
                    "norm": norm,
                    "norm_percentile": percentile(norms, norm),
                    "neighbours": [
                        {"id": int(i), "text": vocab.text(int(i)), "cosine": float(c), "distance": float(d)}
                        for i, c, d in zip(ids[j], cos[j], dist[j], strict=True)
                    ],
                }
            )
            position += 1
    texts, roundtrip = slot_texts(bb, nearest_ids)
    report = {
        "artifact": str(path),
        "method": task.method_name,
        "model": bb.model_id,
        "virtual_tokens": len(tokens),
        "vocabulary": {"tokens": len(vocab), "norm": stats},
        "tokens": tokens,
        "nearest_text": {str(k): v for k, v in texts.items()},
        "nearest_text_roundtrip": roundtrip,
        "mean_nearest_cosine": sum(t["neighbours"][0]["cosine"] for t in tokens) / len(tokens),
        "accuracy": None,
    }
    if rows is not None:
        projected = with_tables(task, {k: vocab.embeddings(torch.tensor(v)) for k, v in nearest_ids.items()})
        calibrated = task.model.verbalizer.calibration is not None
        report["accuracy"] = {
            "soft": accuracy(task, rows, calibrate=True),
            "soft_calibrated": calibrated,
            "nearest": accuracy(projected, rows),
            "rows": len(rows),
            "data": str(data),
        }
    return report
