"""The vocabulary as points in the input-embedding space: a soft prompt's nearest tokens, and the norms.

Two candidate sets:
- ``all``: every token of the tokenizer except its special / added tokens (``<|im_end|>`` ...): the plain
  nearest-neighbour projection the literature measures (Khashabi et al. 2022, "prompt waywardness");
- ``readable``: tokens whose text is printable ASCII without template syntax (``{ } [ ]``) and that
  tokenize back to themselves alone, so a prompt made of them can be written into a template and read;
- ``words``: of those, whole words (a space, then letters) and punctuation: word pieces such as ``da`` glue onto
  the word before them and the text then tokenizes to other tokens (a SmolLM2 smoke run: " positive" + "da").

Nearness is cosine similarity (what PEZ projects by); the Euclidean distance is reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from prompttune.core.backbone import Backbone
from prompttune.core.errors import PromptTuneError

VOCABS = ("readable", "words", "all")
TEMPLATE_SYNTAX = set("{}[]")


def special_ids(tokenizer) -> set[int]:
    """Special and added tokens (chat markers, eos, pad): never a prompt's words."""
    return set(getattr(tokenizer, "all_special_ids", [])) | set(getattr(tokenizer, "added_tokens_decoder", {}))


def readable_text(text: str) -> bool:
    return bool(text.strip()) and text.isascii() and text.isprintable() and not TEMPLATE_SYNTAX & set(text)


def word_text(text: str) -> bool:
    """A whole word with its leading space, or punctuation."""
    if not readable_text(text):
        return False
    return (text[0] == " " and text[1:].isalpha()) or all(not c.isalnum() and not c.isspace() for c in text)


@dataclass
class Vocabulary:
    """Candidate token ids with their embeddings (float32) and texts."""

    backbone: Backbone
    kind: str
    ids: Tensor  # (V,) token ids
    matrix: Tensor  # (V, d) their input embeddings
    unit: Tensor  # (V, d) the same, unit length

    @classmethod
    def of(cls, backbone: Backbone, kind: str = "all") -> Vocabulary:
        if kind not in VOCABS:
            raise PromptTuneError(f"--vocab {kind}: unknown; choose one of {', '.join(VOCABS)}.")
        tok = backbone.tokenizer
        n = min(len(tok), backbone.embedding_matrix.shape[0])
        skip = special_ids(tok)
        ids = [i for i in range(n) if i not in skip]
        if kind != "all":
            texts = dict(zip(ids, tok.batch_decode([[i] for i in ids]), strict=True))
            keep = word_text if kind == "words" else readable_text
            ok = [i for i in ids if keep(texts[i])]
            back = tok([texts[i] for i in ok], add_special_tokens=False)["input_ids"] if ok else []
            ids = [i for i, b in zip(ok, back, strict=True) if b == [i]]  # tokenizes back to itself alone
        if not ids:
            raise PromptTuneError(f"--vocab {kind}: the tokenizer of {backbone.model_id} has no such tokens.")
        id_tensor = torch.tensor(ids)
        matrix = backbone.embedding_matrix.detach()[id_tensor.to(backbone.device)].float().cpu()
        return cls(backbone, kind, id_tensor, matrix, F.normalize(matrix, dim=1))

    def __len__(self) -> int:
        return len(self.ids)

    def text(self, token_id: int) -> str:
        return self.backbone.tokenizer.decode([int(token_id)])

    def nearest(self, vectors: Tensor, k: int = 1) -> tuple[Tensor, Tensor, Tensor]:
        """(ids, cosines, distances), each (n, k): the k tokens nearest by cosine to each of the (n, d) vectors."""
        vectors = vectors.detach().float().cpu()
        cos = F.normalize(vectors, dim=1) @ self.unit.T  # (n, V)
        best, where = cos.topk(min(k, len(self)), dim=1)
        dist = (vectors[:, None, :] - self.matrix[where]).norm(dim=-1)  # (n, k)
        return self.ids[where], best, dist

    def project(self, vectors: Tensor) -> Tensor:
        """(n,) the id of the token nearest by cosine to each vector."""
        vectors = vectors.detach().float().cpu()
        return self.ids[(F.normalize(vectors, dim=1) @ self.unit.T).argmax(dim=1)]

    def embeddings(self, ids: Tensor) -> Tensor:
        """(n, d) float32 input embeddings of token ids."""
        return self.backbone.embedding_matrix.detach()[ids.to(self.backbone.device)].float().cpu()


def norm_stats(backbone: Backbone) -> tuple[dict, Tensor]:
    """({mean, std, p5, p50, p95} of the vocabulary embeddings' L2 norms, the sorted norms)."""
    emb = backbone.embedding_matrix.detach().float().cpu()
    n = min(len(backbone.tokenizer), emb.shape[0])
    skip = special_ids(backbone.tokenizer)
    keep = torch.tensor([i for i in range(n) if i not in skip])
    norms = emb[keep].norm(dim=1).sort().values
    q = torch.quantile(norms, torch.tensor([0.05, 0.5, 0.95]))
    stats = {"mean": float(norms.mean()), "std": float(norms.std()), "p5": float(q[0]), "p50": float(q[1])}
    return stats | {"p95": float(q[2])}, norms


def percentile(sorted_norms: Tensor, value: float) -> float:
    """Share (0-100) of vocabulary norms below ``value``."""
    return 100.0 * float(torch.searchsorted(sorted_norms, torch.tensor(value))) / len(sorted_norms)
