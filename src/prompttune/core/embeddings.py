"""Sentence embeddings from an encoder backbone, the way sentence-transformers computes them.

For all-MiniLM-L6-v2 (the default encoder) that is: word pieces truncated to 256, the last hidden
states averaged over the attention mask (padding excluded), then L2-normalised, so a dot product is
the cosine similarity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch

from prompttune.core.backbone import Backbone
from prompttune.core.errors import ModelError

# sentence-transformers' max_seq_length for all-MiniLM-L6-v2 (its sentence_bert_config.json).
MAX_WORD_PIECES = 256


@lru_cache(maxsize=2)
def _cached_backbone(model: str) -> Backbone:
    return Backbone.load(model)


def load_encoder(model: str | Backbone = "minilm") -> Backbone:
    """The encoder backbone for ``model`` (an alias, folder, or an already loaded Backbone), loaded once per process."""
    backbone = model if isinstance(model, Backbone) else _cached_backbone(model)
    if backbone.kind != "encoder":
        raise ModelError(
            f"--model {backbone.model_id}: sentence embeddings need an encoder (e.g. minilm), not a decoder."
        )
    return backbone


@contextmanager
def _sdpa_attention(model: torch.nn.Module) -> Iterator[None]:
    """Run inference with PyTorch's fused attention, then restore the model's own setting.

    Backbones load with eager attention (faster backward for training); for inference on MiniLM, SDPA
    halves the CPU time of embedding 256-token paragraphs (5.3 vs 10.4 CPU s for 300 SQuAD contexts).
    """
    before = getattr(model.config, "_attn_implementation", None)
    switch = before is not None and before != "sdpa" and hasattr(model, "set_attn_implementation")
    if switch:
        try:
            model.set_attn_implementation("sdpa")
        except (ValueError, ImportError):  # an architecture without SDPA support: keep eager
            switch = False
    try:
        yield
    finally:
        if switch:
            try:
                model.set_attn_implementation(before)
            except (ValueError, KeyError):  # a name transformers does not know (set directly on the config)
                model.config._attn_implementation = before


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average the token states over the attention mask: (b, t, d), (b, t) -> (b, d)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def embed_texts(
    texts: list[str],
    model: str | Backbone = "minilm",
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """L2-normalised sentence embeddings, (len(texts), d) float32, in the order of ``texts``.

    Texts are sorted by length and batched so each batch pads little; ``progress(n)`` is called
    after each batch with the number of texts it embedded.
    """
    backbone = load_encoder(model)
    tok = backbone.tokenizer
    max_len = min(MAX_WORD_PIECES, backbone.max_length)
    if not texts:
        return np.zeros((0, backbone.hidden_size), dtype=np.float32)
    ids = tok(list(texts), add_special_tokens=True, truncation=True, max_length=max_len)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), backbone.hidden_size), dtype=np.float32)
    pad = tok.pad_token_id or 0
    with torch.inference_mode(), _sdpa_attention(backbone.model):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(ids[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            input_ids, mask = input_ids.to(backbone.device), mask.to(backbone.device)
            hidden = backbone.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (b, t, d)
            pooled = torch.nn.functional.normalize(mean_pool(hidden.float(), mask), dim=-1)
            out[chunk] = pooled.cpu().numpy()
            if progress is not None:
                progress(len(chunk))
    return out
