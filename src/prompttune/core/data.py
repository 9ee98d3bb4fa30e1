"""Reading and validating labelled rows from JSONL and CSV files.

Every check runs before training starts, and every error names the file, the line and the field.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prompttune.core.errors import DataError

SINGLE_FIELDS = ("text",)
PAIR_FIELDS = ("text_a", "text_b")
QUESTION_PASSAGE_FIELDS = ("question", "passage")


@dataclass
class Row:
    """One example: its fields (label included, if it has one) and where it came from."""

    fields: dict
    line: int = 0
    source: str = "<memory>"

    @property
    def label(self) -> str | None:
        value = self.fields.get("label")
        if isinstance(value, list | dict):
            raise DataError(
                f"{self.where()}: the label is a {type(value).__name__} ({json.dumps(value)[:60]}); give one label "
                'per row as text, e.g. "label": "positive".'
            )
        return None if value is None else str(value)

    def where(self) -> str:
        return f"{self.source}, line {self.line}" if self.line else self.source


@dataclass
class Dataset:
    rows: list[Row] = field(default_factory=list)
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def labels(self) -> list[str]:
        """The distinct labels, in order of first appearance."""
        seen: dict[str, None] = {}
        for row in self.rows:
            if row.label is not None:
                seen.setdefault(row.label, None)
        return list(seen)

    def fingerprint(self) -> str:
        """A hash of the rows' content (not of the file's bytes), recorded in artifacts."""
        h = hashlib.sha256()
        for row in self.rows:
            h.update(json.dumps(row.fields, sort_keys=True, ensure_ascii=False).encode())
            h.update(b"\n")
        return "sha256:" + h.hexdigest()

    def limit(self, n: int | None) -> Dataset:
        return self if n is None else Dataset(self.rows[:n], self.source)

    def split(self, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
        """A seeded split into (rest, held_out), held_out having ~fraction of the rows."""
        order = list(range(len(self.rows)))
        random.Random(seed).shuffle(order)
        n_held = max(1, round(len(order) * fraction))
        held = sorted(order[:n_held])
        rest = sorted(order[n_held:])
        return (
            Dataset([self.rows[i] for i in rest], self.source),
            Dataset([self.rows[i] for i in held], self.source),
        )


def from_records(records: Iterable[dict | str], source: str = "<memory>") -> Dataset:
    """Rows from Python objects; a bare string becomes {"text": ...}."""
    rows = []
    for i, rec in enumerate(records, start=1):
        if isinstance(rec, str):
            rec = {"text": rec}
        if not isinstance(rec, dict):
            raise DataError(f"{source}, item {i}: expected a dict or a string, got {type(rec).__name__}")
        rows.append(Row(check_text(dict(rec), f"{source} item {i}"), line=0, source=f"{source} item {i}"))
    return Dataset(rows, source)


def load_rows(path: str | Path) -> Dataset:
    """Read a .jsonl (one JSON object a line) or .csv/.tsv file (a header row, then rows)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found. Give the path to a .jsonl or .csv file of labelled rows.")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give a .jsonl or .csv file.")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        rows = _read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix in (".jsonl", ".json", ".ndjson"):
        rows = _read_jsonl(path)
    else:
        raise DataError(f"{path}: unknown file type {suffix!r}; use .jsonl (one JSON object a line) or .csv.")
    if not rows:
        raise DataError(f"{path}: no rows found; the file is empty.")
    return Dataset(rows, str(path))


def check_text(fields: dict, where: str) -> dict:
    """Refuse text that is not valid Unicode (lone surrogates, e.g. from undecodable command-line bytes)."""
    for name, value in fields.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise DataError(
                    f"{where}: field {name!r} is not valid Unicode text (a lone surrogate); pass UTF-8 text."
                ) from None
    return fields


def _read_text(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 are an error naming the line and column."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line, column = data.count(b"\n", 0, e.start) + 1, e.start - data.rfind(b"\n", 0, e.start)
        raise DataError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}). Save the file "
            f"as UTF-8, e.g. iconv -f latin1 -t utf-8 {path} > fixed{path.suffix}"
        ) from None


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    for n, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}, line {n}: not valid JSON ({e.msg} at column {e.colno}). "
                'Each line must be one JSON object, e.g. {"text": "...", "label": "..."}.'
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}, line {n}: expected a JSON object, got {type(obj).__name__}.")
        rows.append(Row(check_text(obj, f"{path}, line {n}"), n, str(path)))
    return rows


def _read_csv(path: Path, delimiter: str) -> list[Row]:
    rows = []
    with io.StringIO(_read_text(path), newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return []
        header = [h.strip() for h in header]
        for n, values in enumerate(reader, start=2):
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise DataError(
                    f"{path}, line {n}: {len(values)} values but the header has {len(header)} columns "
                    f"({', '.join(header)}). Quote values that contain '{delimiter}'."
                )
            rows.append(Row(check_text(dict(zip(header, values, strict=True)), f"{path}, line {n}"), n, str(path)))
    return rows


def infer_fields(dataset: Dataset) -> tuple[str, ...]:
    """The input fields of a task shape the data fits: pair (text_a, text_b), question + passage (BoolQ-style
    yes/no questions about a passage: built-in template ``qa-yes-no``) or single (text)."""
    first = dataset.rows[0].fields
    if all(f in first for f in PAIR_FIELDS):
        return PAIR_FIELDS
    if all(f in first for f in QUESTION_PASSAGE_FIELDS):
        return QUESTION_PASSAGE_FIELDS
    if "text" in first:
        return SINGLE_FIELDS
    raise DataError(
        f"{dataset.rows[0].where()}: no 'text' field (single-text task), no 'text_a'/'text_b' fields "
        f"(pair task) and no 'question'/'passage' fields (yes/no questions about a passage); found "
        f"{', '.join(sorted(first)) or 'no fields'}. Rename the fields, or pass --template with your own field names."
    )


def unused_text_fields(dataset: Dataset, used: Iterable[str], sample: int = 100) -> list[str]:
    """Text fields of the first ``sample`` rows that a template reading ``used`` never shows the model (a row's
    label and id-like fields left out: ``id``, ``idx``, ``uid``, ``guid``, ``*_id``, ``id1``...). Rows such as
    WiC's (a ``word`` besides the pair) or WSC's (``span1_text``, ``span2_text``) need a template that reads them.
    """
    skip = set(used) | {"label"}
    texts: dict[str, list[str]] = {}
    for row in dataset.rows[:sample]:
        for name, value in row.fields.items():
            if name not in skip and isinstance(value, str) and value.strip():
                texts.setdefault(name, []).append(value.strip())
    return sorted(name for name, values in texts.items() if not _id_like(name, values))


def unused_fields_warning(dataset: Dataset, where: str | None = None, remedy: str | None = None) -> str | None:
    """The warning for rows whose text fields the built-in template for their shape (``infer_fields``) never
    shows the model, or None. ``where`` names the rows (default: their file); ``remedy`` says what to do (default:
    pass --template)."""
    used = infer_fields(dataset)
    unused = unused_text_fields(dataset, used)
    if not unused:
        return None
    several = len(unused) > 1
    remedy = remedy or "pass --template with your own (`prompttune templates --help`)"
    return (
        f"{where or dataset.source}: the built-in template reads {', '.join(used)}; the rows' {', '.join(unused)} "
        f"field{'s are' if several else ' is'} never shown to the model. To use {'them' if several else 'it'}, "
        f"{remedy}."
    )


def _id_like(name: str, values: list[str]) -> bool:
    """A field that names or codes a row rather than says something: by its name (``id``, ``uid``, ``*_id``,
    ``id1``), or values that are all one code word with a digit (CoLA's ``source``: ``gj04``)."""
    low = name.lower()
    if low in ("id", "idx", "uid", "guid") or low.endswith("_id") or low.rstrip("0123456789") == "id":
        return True
    return all(" " not in v and any(c.isdigit() for c in v) for v in values)


def check_fields(dataset: Dataset, fields: Sequence[str], need_label: bool) -> None:
    """Every row has every field, non-empty; with need_label, a non-empty label too."""
    for row in dataset.rows:
        for name in fields:
            if name not in row.fields:
                raise DataError(
                    f"{row.where()}: missing field {name!r} (the template uses it). "
                    f"The row has: {', '.join(sorted(row.fields))}."
                )
            if row.fields[name] is None:
                raise DataError(f"{row.where()}: field {name!r} is null.")
        if need_label:
            if "label" not in row.fields:
                raise DataError(f"{row.where()}: missing field 'label'. Every training row needs one.")
            if row.label is None or not row.label.strip():
                raise DataError(f"{row.where()}: empty label. Give every row a label, or remove the row.")


def shipped_data() -> Path:
    """The small sentiment task shipped with the package (the demo's and the tests' data)."""
    from importlib import resources

    return Path(str(resources.files("prompttune") / "resources" / "sentiment.jsonl"))
