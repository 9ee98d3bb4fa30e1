"""Retrieval: documents -> overlapping chunks -> sentence embeddings -> a faiss vector index on disk.

Search is hybrid by default: the dense ranking (cosine similarity of MiniLM embeddings) and a BM25
keyword ranking are fused (rag/fusion.py: the fusion and its weight were tuned on one half of SQuAD and
chosen on the other, benchmarks/bench_rag_squad.py); ``mode="dense"`` or ``"bm25"`` use one alone.
Hits are collapsed per document by default: the best window of a document stands for it, so
overlapping windows of one long document do not fill the top k.

An index directory is written whole (a crash never leaves half an index):
- ``index.faiss``: faiss's own binary format (no pickle), an exact inner-product index over
  L2-normalised embeddings, so scores are cosine similarities;
- ``bm25/``: the keyword index (bm25s: JSON + .npy, no pickle);
- ``chunks.jsonl``: one JSON object per chunk (id, doc_id, source, text), in index order;
- ``manifest.json``: format version, the encoder (id + fingerprint), dimensions and chunking settings.

Saving over a path that holds something else is refused (the folder is not this tool's to delete);
an earlier index is replaced only with ``overwrite=True``, by an atomic swap.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from prompttune.core import atomic
from prompttune.core.backbone import Backbone
from prompttune.core.embeddings import embed_texts, load_encoder
from prompttune.core.errors import ArtifactError, DataError
from prompttune.rag.documents import MAX_QUERY_CHARS, Chunk, Document, chunk_text, make_chunks, read_documents
from prompttune.rag.fusion import DEFAULT_FUSION, Fusion, Ranking, best_per_document
from prompttune.rag.lexical import LexicalIndex

__all__ = ["Chunk", "Document", "Fusion", "Hit", "VectorIndex", "chunk_text", "make_chunks", "read_documents"]

FORMAT = "prompttune-rag-index/1"
MODES = ("hybrid", "dense", "bm25")
MAX_K = 1000  # passages per question at most


@dataclass(frozen=True)
class Hit:
    score: float  # hybrid: fused score (rag/fusion.py); dense: cosine similarity; bm25: BM25 score
    chunk: Chunk


# --- the index ----------------------------------------------------------------------------------
class VectorIndex:
    """Chunks and their embeddings in an exact inner-product faiss index."""

    def __init__(
        self,
        index,
        chunks: list[Chunk],
        manifest: dict,
        lexical: LexicalIndex,
        encoder: str | Backbone | None = None,
    ):
        self.index = index
        self.lexical = lexical
        self.chunks = chunks
        self.manifest = manifest
        self._encoder_spec = encoder  # what to load on first query; None: the encoder the index records
        self._encoder: Backbone | None = encoder if isinstance(encoder, Backbone) else None

    @classmethod
    def build(
        cls,
        docs: list[Document],
        model: str | Backbone = "minilm",
        max_words: int = 200,
        overlap: int = 40,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
        on_chunks: Callable[[int], None] | None = None,
    ) -> VectorIndex:
        """Chunk and embed ``docs``; ``on_chunks(n)`` is told the chunk count before embedding starts."""
        import faiss

        chunks = make_chunks(docs, max_words, overlap)
        if not chunks:
            raise DataError("rag index: the documents have no text to index.")
        if on_chunks:
            on_chunks(len(chunks))
        encoder = load_encoder(model)
        vectors = embed_texts([c.text for c in chunks], encoder, batch_size=batch_size, progress=progress)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        lexical = LexicalIndex.build([c.text for c in chunks])
        manifest = {
            "format": FORMAT,
            "encoder": {"id": encoder.model_id, "fingerprint": encoder.fingerprint()},
            "dim": int(vectors.shape[1]),
            "chunks": len(chunks),
            "documents": len({c.doc_id for c in chunks}),
            "chunk_words": max_words,
            "overlap": overlap,
        }
        return cls(index, chunks, manifest, lexical, encoder)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the index directory atomically; see ``check_index_path`` for what may be replaced."""
        import faiss

        check_index_path(path, overwrite)

        def fill(tmp: Path) -> None:
            (tmp / "index.faiss").write_bytes(faiss.serialize_index(self.index).tobytes())
            self.lexical.save(tmp / "bm25")
            lines = "".join(json.dumps(asdict(c), ensure_ascii=False) + "\n" for c in self.chunks)
            (tmp / "chunks.jsonl").write_text(lines, encoding="utf-8")
            (tmp / "manifest.json").write_text(json.dumps(self.manifest, indent=2) + "\n", encoding="utf-8")

        atomic.write_dir(Path(path), fill)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, model: str | Backbone | None = None) -> VectorIndex:
        """Read an index directory. The encoder (``model``, else the one recorded) is loaded on first query."""
        import faiss

        path = Path(path)
        if not path.is_dir():
            raise ArtifactError(
                f"--index {path}: no index directory there; build one with  prompttune rag index DOCS --index {path}"
            )
        files = {
            name: path / name for name in ("manifest.json", "chunks.jsonl", "index.faiss", "bm25/params.index.json")
        }
        for name, f in files.items():
            if not f.is_file():
                raise ArtifactError(f"--index {path}: {name} is missing; rebuild it with  prompttune rag index")
        try:
            manifest = json.loads(files["manifest.json"].read_text(encoding="utf-8"))
            chunks = [
                Chunk(**json.loads(line)) for line in files["chunks.jsonl"].read_text(encoding="utf-8").splitlines()
            ]
            index = faiss.deserialize_index(np.frombuffer(files["index.faiss"].read_bytes(), dtype=np.uint8))
            lexical = LexicalIndex.load(path / "bm25", len(chunks))
        except (json.JSONDecodeError, TypeError, RuntimeError, ValueError, OSError) as e:
            raise ArtifactError(f"--index {path}: damaged ({type(e).__name__}: {e}); rebuild it.") from None
        if manifest.get("format") != FORMAT:
            raise ArtifactError(f"--index {path}: format {manifest.get('format')!r}, expected {FORMAT!r}; rebuild it.")
        if index.ntotal != len(chunks):
            raise ArtifactError(f"--index {path}: {index.ntotal} vectors but {len(chunks)} chunks; rebuild it.")
        return cls(index, chunks, manifest, lexical, model)

    @property
    def encoder(self) -> Backbone:
        if self._encoder is None:
            encoder = load_encoder(self._encoder_spec or self.manifest["encoder"]["id"])
            if encoder.fingerprint() != self.manifest["encoder"]["fingerprint"]:
                raise ArtifactError(
                    f"the index was built with encoder {self.manifest['encoder']['id']} "
                    f"({self.manifest['encoder']['fingerprint']}), not {encoder.model_id}; query it with that encoder."
                )
            self._encoder = encoder
        return self._encoder

    def __len__(self) -> int:
        return len(self.chunks)

    def search(
        self,
        queries: str | list[str],
        k: int = 5,
        mode: str = "hybrid",
        batch_size: int = 64,
        query_vectors: np.ndarray | None = None,
        fusion: Fusion = DEFAULT_FUSION,
        collapse: bool = True,
    ) -> list[Hit] | list[list[Hit]]:
        """The ``k`` best chunks per query, best first (one list for a string, a list of lists for a list).

        ``collapse``: keep the best chunk of each document (k distinct documents when there are k).
        ``query_vectors``: the queries' embeddings, if already computed (a benchmark comparing modes).
        """
        single = isinstance(queries, str)
        texts = [queries] if single else list(queries)
        check_search(texts, k, mode)
        vectors = None
        if mode != "bm25":
            vectors = query_vectors if query_vectors is not None else self.embed_queries(texts, batch_size)
        n = len(self.chunks)
        depth = min(n, max(100, 10 * k) if mode == "hybrid" or collapse else k)
        ranked: list[Ranking] = [[] for _ in texts]
        todo = list(range(len(texts)))
        while todo:  # deepen for the queries whose candidates held fewer than k documents
            rankings = self.rankings([texts[i] for i in todo], depth, mode, None if vectors is None else vectors[todo])
            again = []
            for i, (dense, lexical) in zip(todo, rankings, strict=True):
                full = fusion.fuse(dense, lexical) if mode == "hybrid" else dense or lexical
                ranked[i] = best_per_document(full, lambda row: self.chunks[row].doc_id, k) if collapse else full[:k]
                if collapse and len(ranked[i]) < k and depth < n:
                    again.append(i)
            todo, depth = again, min(n, 4 * depth)
        hits = [[Hit(score, self.chunks[row]) for row, score in ranking] for ranking in ranked]
        return hits[0] if single else hits

    def rankings(
        self, texts: list[str], depth: int, mode: str = "hybrid", query_vectors: np.ndarray | None = None
    ) -> list[tuple[Ranking, Ranking]]:
        """(dense ranking, BM25 ranking) of the best ``depth`` chunks per query, before fusion; the one
        ``mode`` does not use is empty. BM25 leaves out chunks that share no word with the query."""
        dense: list[Ranking] = [[] for _ in texts]
        lexical: list[Ranking] = [[] for _ in texts]
        if mode != "bm25":
            vectors = query_vectors if query_vectors is not None else self.embed_queries(texts)
            scores, rows = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), depth)
            dense = [
                [(int(r), float(s)) for r, s in zip(rrow, srow, strict=True) if r >= 0]
                for rrow, srow in zip(rows, scores, strict=True)
            ]
        if mode != "dense":
            lexical = self.lexical.search(texts, depth)
        return list(zip(dense, lexical, strict=True))

    def embed_queries(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return embed_texts(texts, self.encoder, batch_size=batch_size)


def check_search(texts: list[str], k: int, mode: str) -> None:
    """Refuse a search the index cannot answer, before any model is loaded."""
    if not 1 <= k <= MAX_K:
        raise DataError(f"-k {k}: ask for between 1 and {MAX_K} passages.")
    if mode not in MODES:
        raise DataError(f"--mode {mode}: not a retrieval mode; use one of {', '.join(MODES)}.")
    for n, text in enumerate(texts, 1):
        if not text.strip():
            raise DataError(f"question {n}: empty; give some words to search for.")
        if len(text) > MAX_QUERY_CHARS:
            raise DataError(f"question {n}: {len(text)} characters, over the limit of {MAX_QUERY_CHARS}; shorten it.")


def is_index_dir(path: Path) -> bool:
    """Whether ``path`` is a directory this tool wrote as an index (its manifest names the format)."""
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and str(manifest.get("format", "")).startswith("prompttune-rag-index/")


def check_index_path(path: str | Path, overwrite: bool = False) -> None:
    """Refuse to write an index where something else would be lost; call it before the slow work.

    New or empty folder: fine. An earlier index: replaced only with ``overwrite``. A file, or a folder
    holding anything else: refused, even with ``overwrite`` (it is not this tool's to delete).
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise DataError(f"--index {path}: a file is there, not an index folder; choose another --index path.")
    if is_index_dir(path):
        if not overwrite:
            raise DataError(
                f"--index {path}: an index is already there; add --overwrite to replace it, or choose another path."
            )
        return
    entries = sorted(p.name for p in path.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise DataError(
            f"--index {path}: the folder holds other files ({shown}) and is not a prompttune index; it is "
            "left alone (--overwrite replaces only an index). Choose a new or empty folder for the index."
        )


# --- answering ----------------------------------------------------------------------------------
def format_context(hits: list[Hit]) -> str:
    """Numbered passages for the ``rag`` template: ``[1] (source) text``."""
    return "\n\n".join(f"[{i}] ({h.chunk.source}) {h.chunk.text}" for i, h in enumerate(hits, 1))


@dataclass
class RagAnswer:
    question: str
    answer: str
    hits: list[Hit]
    citations: list[int] = field(default_factory=list)  # 1-based numbers of the hits the answer cites
    cited_by: str | None = None  # "model" (numbers it wrote), "overlap" (attributed by its words) or None

    def to_dict(self) -> dict:
        return {
            "question": self.question,
            "answer": self.answer,
            "citations": self.citations,
            "cited_by": self.cited_by,
            "sources": [
                {
                    "rank": i,
                    "score": round(h.score, 4),
                    "id": h.chunk.id,
                    "source": h.chunk.source,
                    "text": h.chunk.text,
                }
                for i, h in enumerate(self.hits, 1)
            ],
        }


def answer(
    question: str,
    index: VectorIndex,
    decoder: Backbone,
    k: int = 5,
    template: str = "rag",
    max_new_tokens: int = 96,
    mode: str = "hybrid",
) -> RagAnswer:
    """Retrieve the ``k`` nearest chunks and answer from them through the retrieval template.

    Generation uses the default repetition control (GenerationConfig) and ends at a sentence end. The answer
    cites the passages it uses (rag/citations.py: the model's own [n] marks, else attribution by its words).
    """
    from prompttune.core.generate import GenerationConfig, Generator
    from prompttune.rag.citations import cite

    if not question.strip():
        raise DataError("rag ask: the question is empty.")
    config = GenerationConfig(max_new_tokens=max_new_tokens, finish_sentence=True)  # bad values fail before search
    hits = index.search(question, k=k, mode=mode)
    values = {"question": question, "context": format_context(hits)}
    cited = cite(Generator(decoder).complete(template, values, config).strip(), [h.chunk.text for h in hits])
    return RagAnswer(question, cited.text, hits, cited.citations, cited.cited_by)
