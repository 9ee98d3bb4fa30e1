"""Signatures: what a step reads and what it writes, declared instead of written as a prompt string.

    Signature.parse("review -> sentiment: one of positive, negative")
    Signature.parse("context, question -> answer", instruction="Answer from the context.")

    class Sentiment(Signature):
        '''Classify the sentiment of a movie review.'''          # the instruction
        review = InputField("a movie review")
        sentiment = OutputField("its sentiment", one_of=["positive", "negative"])

An output's type follows its colon: ``one of A, B, C`` (a label set: the answer must be one of them),
``number`` (an int or a float), ``json`` (any JSON value); any other text is a description of a free-text
field. Fields are separated by commas; the options of a label set run on until a field written
``name: ...`` or a ``;`` begins, so put a label-set field last or end it with ``;``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from prompttune.core.errors import DataError

MAX_FIELDS = 16  # per side of a signature
MAX_OPTIONS = 64  # per label set
MAX_INSTRUCTION_CHARS = 4000
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KINDS = ("text", "label", "number", "json")
_ONE_OF = re.compile(r"one\s+of\s*:?\s*(.*)$", re.IGNORECASE | re.DOTALL)


class SignatureError(DataError):
    """A signature string or class that cannot be read; the message names the part and what to write."""


@dataclass(frozen=True)
class Field:
    """One named field. ``kind`` is text, label (``options`` hold the label set), number or json."""

    name: str
    description: str = ""
    kind: str = "text"
    options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_RE.fullmatch(self.name):
            raise SignatureError(f"field name {self.name!r}: use a plain identifier (letters, digits, _).")
        if self.kind not in KINDS:
            raise SignatureError(f"field {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}.")
        if self.kind == "label":
            if not self.options:
                raise SignatureError(f"field {self.name!r}: 'one of' needs at least one option, e.g. 'one of yes, no'.")
            if len(self.options) > MAX_OPTIONS:
                raise SignatureError(f"field {self.name!r}: {len(self.options)} options; at most {MAX_OPTIONS}.")
            if len(set(self.options)) != len(self.options):
                raise SignatureError(f"field {self.name!r}: an option is listed twice in {list(self.options)}.")

    def describe(self) -> str:
        """How the prompt explains the field to the model."""
        what = {
            "label": "one of: " + ", ".join(self.options),
            "number": "a number",
            "json": "a JSON value",
            "text": "",
        }[self.kind]
        parts = [p for p in (self.description, what) if p]
        return f"{self.name}: {'; '.join(parts)}" if parts else self.name

    def to_dict(self) -> dict:
        out = {"name": self.name, "kind": self.kind}
        if self.description:
            out["description"] = self.description
        if self.options:
            out["options"] = list(self.options)
        return out


@dataclass(frozen=True)
class _Declared:
    """A field declared in a Signature subclass's body; its name is the attribute's."""

    side: str
    field: Field


def InputField(description: str = "") -> _Declared:  # noqa: N802 - reads like a declaration, as in DSPy
    return _Declared("input", Field("_", description))


def OutputField(description: str = "", one_of=None, kind: str | None = None) -> _Declared:  # noqa: N802
    options = tuple(str(o) for o in one_of) if one_of else ()
    return _Declared("output", Field("_", description, kind or ("label" if options else "text"), options))


@dataclass(frozen=True)
class Signature:
    """Inputs, outputs and the instruction that a module turns into a prompt."""

    inputs: tuple[Field, ...] = ()
    outputs: tuple[Field, ...] = ()
    instruction: str = ""

    def __init_subclass__(cls, **kwargs) -> None:
        """A class body of InputField/OutputField attributes becomes the default fields (no metaclass)."""
        super().__init_subclass__(**kwargs)
        ins, outs = [], []
        for name, value in list(vars(cls).items()):
            if isinstance(value, _Declared):
                (ins if value.side == "input" else outs).append(replace(value.field, name=name))
        cls._class_fields = (tuple(ins), tuple(outs), (cls.__doc__ or "").strip())

    def __post_init__(self) -> None:
        if not self.inputs and not self.outputs and hasattr(type(self), "_class_fields"):
            ins, outs, doc = type(self)._class_fields
            object.__setattr__(self, "inputs", ins)
            object.__setattr__(self, "outputs", outs)
            object.__setattr__(self, "instruction", self.instruction or doc)
        _check(self)

    # --- reading --------------------------------------------------------------------------------
    @classmethod
    def parse(cls, spec: str, instruction: str = "") -> Signature:
        if not isinstance(spec, str) or spec.count("->") != 1:
            raise SignatureError(
                f"signature {spec!r}: write inputs -> outputs with one '->', e.g. 'review -> sentiment: one of "
                "positive, negative' or 'context, question -> answer'."
            )
        left, right = (s.strip() for s in spec.split("->"))
        if not left or not right:
            side = "inputs" if not left else "outputs"
            raise SignatureError(f"signature {spec!r}: no {side}; name at least one field on each side of '->'.")
        return cls(tuple(_fields(left, spec, "input")), tuple(_fields(right, spec, "output")), instruction)

    @classmethod
    def coerce(cls, value) -> Signature:
        """A Signature from a string, a Signature subclass, an instance, or a dict written by ``to_dict``."""
        if isinstance(value, Signature):
            return value
        if isinstance(value, type) and issubclass(value, Signature):
            return value()
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, dict):
            return cls.from_dict(value)
        raise SignatureError(f"signature: got a {type(value).__name__}; give a string like 'text -> label' or a class.")

    @classmethod
    def from_dict(cls, raw: dict) -> Signature:
        try:
            ins = tuple(Field(**{**f, "options": tuple(f.get("options", ()))}) for f in raw["inputs"])
            outs = tuple(Field(**{**f, "options": tuple(f.get("options", ()))}) for f in raw["outputs"])
        except (KeyError, TypeError) as e:
            raise SignatureError(f"signature: a saved signature lacks or has a wrong key ({e}).") from None
        return cls(ins, outs, str(raw.get("instruction", "")))

    def to_dict(self) -> dict:
        return {
            "inputs": [f.to_dict() for f in self.inputs],
            "outputs": [f.to_dict() for f in self.outputs],
            "instruction": self.instruction,
        }

    def with_instruction(self, instruction: str) -> Signature:
        return Signature(self.inputs, self.outputs, instruction)

    def prepend_output(self, f: Field) -> Signature:
        return Signature(self.inputs, (f, *self.outputs), self.instruction)

    @property
    def input_names(self) -> list[str]:
        return [f.name for f in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [f.name for f in self.outputs]

    def __str__(self) -> str:
        return f"{', '.join(self.input_names)} -> {', '.join(self.output_names)}"


def _fields(text: str, spec: str, side: str) -> list[Field]:
    out: list[Field] = []
    label_open = False
    for group in text.split(";"):
        label_open = False
        for part in (p.strip() for p in group.split(",")):
            if not part:
                raise SignatureError(f"signature {spec!r}: an empty {side} field (two commas in a row?).")
            name, colon, rest = part.partition(":")
            name = name.strip()
            if label_open and not colon:  # one more option of the label set before it
                last = out[-1]
                out[-1] = Field(last.name, last.description, "label", (*last.options, part))
                continue
            if not NAME_RE.fullmatch(name):
                raise SignatureError(
                    f"signature {spec!r}: {side} field {name!r} is not a plain identifier; write 'name' or "
                    "'name: description'."
                )
            f, label_open = _typed(name, rest.strip(), spec) if colon else (Field(name), False)
            if side == "input" and f.kind != "text":
                raise SignatureError(f"signature {spec!r}: input {name!r} has a type; types are for outputs only.")
            out.append(f)
    return out


def _typed(name: str, rest: str, spec: str) -> tuple[Field, bool]:
    m = _ONE_OF.match(rest)
    if m:
        first = m.group(1).strip()
        if not first:
            raise SignatureError(f"signature {spec!r}: {name!r} says 'one of' without options.")
        return Field(name, "", "label", (first,)), True
    low = rest.lower()
    if low in ("number", "int", "integer", "float"):
        return Field(name, "", "number"), False
    if low == "json":
        return Field(name, "", "json"), False
    return Field(name, rest), False


def _check(sig: Signature) -> None:
    for side, fields in (("inputs", sig.inputs), ("outputs", sig.outputs)):
        if not fields:
            raise SignatureError(f"signature {sig}: no {side}; name at least one field on each side of '->'.")
        if len(fields) > MAX_FIELDS:
            raise SignatureError(f"signature {sig}: {len(fields)} {side}; at most {MAX_FIELDS}.")
    names = sig.input_names + sig.output_names
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SignatureError(f"signature {sig}: field(s) {dup} named twice; each field needs its own name.")
    if not isinstance(sig.instruction, str) or len(sig.instruction) > MAX_INSTRUCTION_CHARS:
        raise SignatureError(f"signature {sig}: the instruction must be text of at most {MAX_INSTRUCTION_CHARS} chars.")
