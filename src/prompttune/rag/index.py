"""Retrieval: documents -> overlapping chunks -> sentence embeddings -> a faiss vector index on disk.

Search is hybrid by default: the dense ranking (cosine similarity of MiniLM embeddings) and a BM25
keyword ranking are fused by reciprocal rank (each chunk scores sum 1 / (60 + rank)); ``mode="dense"``
or ``"bm25"`` use one alone. On SQuAD dev the fusion finds the gold paragraph in the top 5 more often
than either (benchmarks/bench_rag_squad.py).

An index directory is written whole (a crash never leaves half an index):
- ``index.faiss``: faiss's own binary format (no pickle), an exact inner-product index over
  L2-normalised embeddings, so scores are cosine similarities;
- ``bm25/``: the keyword index (bm25s: JSON + .npy, no pickle);
- ``chunks.jsonl``: one JSON object per chunk (id, doc_id, source, text), in index order;
- ``manifest.json``: format version, the encoder (id + fingerprint), dimensions and chunking settings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from prompttune.core import atomic
from prompttune.core.backbone import Backbone
from prompttune.core.embeddings import embed_texts, load_encoder
from prompttune.core.errors import ArtifactError, DataError
from prompttune.rag.lexical import LexicalIndex

FORMAT = "prompttune-rag-index/1"
MODES = ("hybrid", "dense", "bm25")
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al., 2009)
DOC_SUFFIXES = (".txt", ".md")
_BLANK_LINES = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Document:
    id: str
    source: str  # the file (and line) it came from
    text: str


@dataclass(frozen=True)
class Chunk:
    id: str  # "<doc id>#<n>"
    doc_id: str
    source: str
    text: str


@dataclass(frozen=True)
class Hit:
    score: float  # hybrid: fused reciprocal-rank score; dense: cosine similarity; bm25: BM25 score
    chunk: Chunk


# --- reading documents --------------------------------------------------------------------------
def read_documents(path: str | Path, text_field: str = "text", id_field: str = "id") -> list[Document]:
    """Documents from a .jsonl file (one object per line), a .txt/.md file, or a folder of them.

    Exact duplicate texts are kept once (a QA file repeats its context for every question).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; give a .jsonl file, a .txt/.md file, or a folder of them.")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DOC_SUFFIXES + (".jsonl",))
        if not files:
            raise DataError(f"{path}: the folder has no .txt, .md or .jsonl files.")
        docs = [d for f in files for d in _read_file(f, text_field, id_field, base=path)]
    else:
        docs = _read_file(path, text_field, id_field, base=path.parent)
    seen: set[str] = set()
    unique = [d for d in docs if d.text not in seen and not seen.add(d.text)]
    if not unique:
        raise DataError(f"{path}: no document has any text; nothing to index.")
    return unique


def _read_file(path: Path, text_field: str, id_field: str, base: Path) -> list[Document]:
    name = str(path.relative_to(base)) if path.is_relative_to(base) else str(path)
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path, name, text_field, id_field)
    if path.suffix.lower() not in DOC_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; give .jsonl, .txt or .md.")
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    return [Document(name, name, text)] if text else []


def _read_jsonl(path: Path, name: str, text_field: str, id_field: str) -> list[Document]:
    docs = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg}).") from None
            if not isinstance(row, dict) or text_field not in row:
                fields = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise DataError(
                    f"{path}:{n}: no {text_field!r} field (has {fields}); name the text field with --text-field."
                )
            text = str(row[text_field]).strip()
            if text:
                doc_id = str(row.get(id_field, f"{name}:{n}"))
                docs.append(Document(doc_id, f"{name}:{n}", text))
    return docs


# --- chunking -----------------------------------------------------------------------------------
def chunk_text(text: str, max_words: int = 200, overlap: int = 40) -> list[str]:
    """Pack whole paragraphs into chunks of at most ``max_words`` words; split longer paragraphs into
    windows of ``max_words`` words that overlap by ``overlap`` words."""
    if max_words < 1 or not 0 <= overlap < max_words:
        raise DataError(
            f"chunking: need --chunk-words >= 1 and 0 <= --overlap < --chunk-words (got {max_words}, {overlap})."
        )
    chunks: list[str] = []
    current: list[str] = []
    for para in _BLANK_LINES.split(text):
        words = para.split()
        if not words:
            continue
        if len(current) + len(words) <= max_words:
            current += words if not current else ["\n\n", *words]
            continue
        if current:
            chunks.append(_join(current))
            current = []
        if len(words) <= max_words:
            current = words
            continue
        step = max_words - overlap
        for start in range(0, len(words), step):
            chunks.append(" ".join(words[start : start + max_words]))
            if start + max_words >= len(words):
                break
    if current:
        chunks.append(_join(current))
    return chunks


def _join(words: list[str]) -> str:
    return " ".join(words).replace(" \n\n ", "\n\n")


def make_chunks(docs: Iterable[Document], max_words: int = 200, overlap: int = 40) -> list[Chunk]:
    return [
        Chunk(f"{d.id}#{i}", d.id, d.source, text)
        for d in docs
        for i, text in enumerate(chunk_text(d.text, max_words, overlap))
    ]


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

    def save(self, path: str | Path) -> Path:
        import faiss

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
    ) -> list[Hit] | list[list[Hit]]:
        """The ``k`` best chunks per query, best first (one list for a string, a list of lists for a list).

        ``query_vectors``: the queries' embeddings, if already computed (a benchmark comparing modes).
        """
        single = isinstance(queries, str)
        texts = [queries] if single else list(queries)
        if k < 1:
            raise DataError(f"-k {k}: ask for at least one passage.")
        if mode not in MODES:
            raise DataError(f"--mode {mode}: not a retrieval mode; use one of {', '.join(MODES)}.")
        depth = min(len(self.chunks), k if mode != "hybrid" else max(50, 4 * k))
        dense: list[list[tuple[int, float]]] = [[] for _ in texts]
        lexical: list[list[tuple[int, float]]] = [[] for _ in texts]
        if mode != "bm25":
            vectors = query_vectors if query_vectors is not None else self.embed_queries(texts, batch_size)
            scores, rows = self.index.search(vectors, depth)
            dense = [
                [(int(r), float(s)) for r, s in zip(rrow, srow, strict=True) if r >= 0]
                for rrow, srow in zip(rows, scores, strict=True)
            ]
        if mode != "dense":
            lexical = self.lexical.search(texts, depth)
        ranked = [_fuse(d, x, k=k) if mode == "hybrid" else (d or x)[:k] for d, x in zip(dense, lexical, strict=True)]
        hits = [[Hit(score, self.chunks[row]) for row, score in ranking] for ranking in ranked]
        return hits[0] if single else hits

    def embed_queries(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return embed_texts(texts, self.encoder, batch_size=batch_size)


def _fuse(*rankings: list[tuple[int, float]], k: int) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: each ranking gives a row 1 / (RRF_K + rank); the best ``k`` rows by the sum."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (row, _) in enumerate(ranking, 1):
            fused[row] = fused.get(row, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(fused.items(), key=lambda item: -item[1])[:k]


# --- answering ----------------------------------------------------------------------------------
def format_context(hits: list[Hit]) -> str:
    """Numbered passages for the ``rag`` template: ``[1] (source) text``."""
    return "\n\n".join(f"[{i}] ({h.chunk.source}) {h.chunk.text}" for i, h in enumerate(hits, 1))


@dataclass
class RagAnswer:
    question: str
    answer: str
    hits: list[Hit]

    def to_dict(self) -> dict:
        return {
            "question": self.question,
            "answer": self.answer,
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
    """Retrieve the ``k`` nearest chunks and answer from them through the retrieval template."""
    from prompttune.api import PromptTask

    if not question.strip():
        raise DataError("rag ask: the question is empty.")
    hits = index.search(question, k=k, mode=mode)
    task = PromptTask.create(decoder, labels=["answer"], method="zero-shot", template=template)
    text = task.generate({"question": question, "context": format_context(hits)}, max_new_tokens=max_new_tokens)
    return RagAnswer(question, text.strip(), hits)
