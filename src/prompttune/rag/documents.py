"""Documents for an index: read from .jsonl / .txt / .md files or a folder of them, then chunked.

Reading checks what a user meets first: a file that is not UTF-8 is named (with its line for JSONL),
and document ids must be unique, because hits are collapsed per document and cited by id: a
non-unique ``--id-field`` (e.g. ``title`` on SQuAD, where one article has many paragraphs) is an
error naming the field, the value and both lines, rather than ids silently shared or renamed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prompttune.core.errors import DataError

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


# --- reading documents --------------------------------------------------------------------------
def read_documents(path: str | Path, text_field: str = "text", id_field: str = "id") -> list[Document]:
    """Documents from a .jsonl file (one object per line), a .txt/.md file, or a folder of them.

    Exact duplicate texts are kept once (a QA file repeats its context for every question). A JSONL
    row without ``id_field`` gets ``file:line`` as its id; ids given by the field must be unique.
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
    _check_unique_ids(unique, id_field)
    return unique


def _check_unique_ids(docs: list[Document], id_field: str) -> None:
    first: dict[str, Document] = {}
    for d in docs:
        if d.id in first:
            raise DataError(
                f"--id-field {id_field}: the value {d.id!r} names two different documents ({first[d.id].source} "
                f"and {d.source}); document ids must be unique (hits are collapsed and cited per document). "
                "Name a field that is unique per document, or one the rows lack (each document is then named "
                "file:line)."
            )
        first[d.id] = d


def _read_file(path: Path, text_field: str, id_field: str, base: Path) -> list[Document]:
    name = str(path.relative_to(base)) if path.is_relative_to(base) else str(path)
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path, name, text_field, id_field)
    if path.suffix.lower() not in DOC_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; give .jsonl, .txt or .md.")
    text = _decode(path.read_bytes(), path).strip()
    return [Document(name, name, text)] if text else []


def _decode(data: bytes, path: Path, line: int | None = None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"{path}:{line}" if line is not None else str(path)
        raise DataError(
            f"{where}: not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
            f"convert it, e.g.  iconv -f latin1 -t utf-8 {path} > utf8{path.suffix}"
        ) from None


def _read_jsonl(path: Path, name: str, text_field: str, id_field: str) -> list[Document]:
    docs = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            line = _decode(raw, path, n)
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
                doc_id = str(row[id_field]) if id_field in row else f"{name}:{n}"
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


# --- questions for `rag search --file` ------------------------------------------------------------
MAX_QUESTIONS = 100_000  # questions per --file at most
MAX_QUERY_CHARS = 20_000  # characters per question at most (the encoder reads 256 word pieces of it)


def read_questions(path: str | Path, field: str = "question") -> list[str]:
    """Questions from a .txt file (one per line, blank lines skipped) or a .jsonl file (``field`` of each row)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--file {path}: no such file; give a .txt file (one question a line) or a .jsonl file.")
    if path.suffix.lower() not in (".txt", ".jsonl"):
        raise DataError(f"--file {path}: unsupported file type {path.suffix!r}; give .txt or .jsonl.")
    questions: list[str] = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            line = _decode(raw, path, n).strip()
            if not line:
                continue
            if path.suffix.lower() == ".jsonl":
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not valid JSON ({e.msg}).") from None
                if not isinstance(row, dict) or not isinstance(row.get(field), str) or not row[field].strip():
                    raise DataError(f"{path}:{n}: no {field!r} text; name the field with --question-field.")
                line = row[field].strip()
            if len(line) > MAX_QUERY_CHARS:
                raise DataError(f"{path}:{n}: {len(line)} characters, over the limit of {MAX_QUERY_CHARS} a question.")
            if len(questions) == MAX_QUESTIONS:
                raise DataError(f"--file {path}: more than {MAX_QUESTIONS} questions (the limit); split the file.")
            questions.append(line)
    if not questions:
        raise DataError(f"--file {path}: no questions in it.")
    return questions
