"""Templates: how a row becomes the text the model reads, and where soft tokens and the label go.

Syntax (shared with the hard-prompt system):
- ``{{ field }}`` inserts a row's field; templates are Jinja2 rendered in an immutable sandbox, so a
  template cannot reach Python objects, files or the environment. ``{{ labels }}`` is the list of label
  words (``{{ labels | join(', ') }}``). Single braces and JSON are literal text.
- ``[soft]`` (the method's number of virtual tokens) or ``[soft:N]`` marks where trainable soft
  tokens stand.
- ``[label]`` marks where the answer goes, in a one-string template; it must come last.

A template is rendered once with placeholder values to find its *constant prefix*: everything before the
first row field (system text, soft tokens, instructions). That prefix is the same for every row, so
its keys/values are computed once per step in training and once per artifact at inference.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import TemplateError

SOFT_RE = re.compile(r"\[soft(?::(\d+))?\]")
LABEL_MARK = "[label]"
# Private-use characters stand in for soft slots and fields while a template is rendered; row values
# are stripped of them so data can never forge a soft slot.
_SOFT_OPEN, _SOFT_CLOSE, _VAR_OPEN, _VAR_CLOSE = "\ue000", "\ue001", "\ue002", "\ue003"
_SENTINELS = re.compile("[\ue000-\ue003]")
_SOFT_SENTINEL_RE = re.compile(f"{_SOFT_OPEN}(\\d+){_SOFT_CLOSE}")
AUTO_VARIABLES = frozenset({"labels"})

_PLAIN = (str, int, float, bool)


def _only_plain_values(value):
    """Refuse to print anything but text, numbers and lists of them (no functions, classes, objects)."""
    if value is None or isinstance(value, (*_PLAIN, jinja2.Undefined)):  # Undefined raises its own error
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, _PLAIN) for v in value):
        return value
    raise jinja2.exceptions.SecurityError(f"a template cannot print a {type(value).__name__} object")


_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False, finalize=_only_plain_values
)
_ENV.globals.clear()  # no range/dict/lipsum/cycler/joiner/namespace: every name is a row field or 'labels'

BUILTIN: dict[str, dict] = {
    "classify": {
        "system": "Classify the text. Possible labels: {{ labels | join(', ') }}. Reply with the label only.",
        "user": "[soft]{{ text }}",
        "answer": "[soft:4]",
    },
    "classify-pair": {
        "system": "Read the two texts and classify how they relate. Possible labels: "
        "{{ labels | join(', ') }}. Reply with the label only.",
        "user": "[soft]Text A: {{ text_a }}\nText B: {{ text_b }}",
        "answer": "[soft:4]",
    },
}


@dataclass(frozen=True)
class Template:
    """A prompt template: optional system text, the user turn, and the text the answer starts with.

    With ``chat`` (the default) the turns go through the backbone's own chat template; a backbone
    without one gets plain ``system\\n\\nuser\\nanswer`` text.
    """

    user: str
    system: str | None = None
    answer: str = ""
    chat: bool = True
    # Few-shot demonstrations: rows (fields + "label") rendered as earlier turns before the user turn.
    # They belong to the constant prefix, so they cost nothing per row in training or at inference.
    demos: tuple = ()

    @classmethod
    def from_spec(cls, spec: str | dict | Template | None, fields: tuple[str, ...] = ("text",)) -> Template:
        """A built-in name, a JSON file path, a dict, or a one-string template ending in ``[label]``."""
        if isinstance(spec, Template):
            return spec
        if spec is None:
            spec = "classify-pair" if fields == ("text_a", "text_b") else "classify"
        if isinstance(spec, dict):
            unknown = set(spec) - {"user", "system", "answer", "chat", "demos"}
            if unknown or "user" not in spec:
                raise TemplateError(
                    f"template: expected keys user (required), system, answer, chat; got {sorted(spec)}"
                )
            return cls(**{**spec, "demos": tuple(dict(d) for d in spec.get("demos", ()))})
        if spec in BUILTIN:
            return cls(**BUILTIN[spec])
        if spec.endswith(".json") and Path(spec).is_file():
            try:
                return cls.from_spec(json.loads(Path(spec).read_text(encoding="utf-8")))
            except json.JSONDecodeError as e:
                raise TemplateError(f"{spec}: not valid JSON ({e.msg}, line {e.lineno})") from None
        if LABEL_MARK not in spec:
            raise TemplateError(
                f"template {spec!r}: not a built-in name ({', '.join(BUILTIN)}) and has no {LABEL_MARK} "
                "marker. A one-string template looks like 'Review: {{ text }}\\nSentiment: [label]'."
            )
        before, _, after = spec.partition(LABEL_MARK)
        if after.strip():
            raise TemplateError(f"template: text after {LABEL_MARK} ({after.strip()!r}); the label must come last.")
        return cls(user=before, chat=False)

    def to_dict(self) -> dict:
        return {**asdict(self), "demos": [dict(d) for d in self.demos]}

    @cached_property
    def variables(self) -> frozenset[str]:
        """The row fields the template uses (auto variables such as ``labels`` excluded)."""
        names: set[str] = set()
        for part in (self.system or "", self.user, self.answer):
            try:
                names |= meta.find_undeclared_variables(_ENV.parse(part))
            except jinja2.TemplateSyntaxError as e:
                raise TemplateError(f"template: {e.message} (line {e.lineno} of {part!r})") from None
        return frozenset(names - AUTO_VARIABLES)

    def compile(
        self, tokenizer, labels: list[str], num_virtual_tokens: int, words: dict[str, str] | None = None
    ) -> CompiledTemplate:
        return CompiledTemplate(self, tokenizer, labels, num_virtual_tokens, words or {})

    def with_demos(self, demos: list[dict]) -> Template:
        return Template(self.user, self.system, self.answer, self.chat, tuple(dict(d) for d in demos))


@dataclass
class SoftSlot:
    index: int
    size: int


@dataclass
class CompiledTemplate:
    """A template bound to a tokenizer and label words: constant prefix segments + per-row text."""

    template: Template
    tokenizer: object
    labels: list[str]
    num_virtual_tokens: int
    words: dict = field(default_factory=dict)  # label -> the word a demo's answer shows
    prefix: list[str | SoftSlot] = field(init=False)
    label_space: str = field(init=False)

    def __post_init__(self) -> None:
        t = self.template
        self.slot_sizes: list[int] = []

        def mark(match: re.Match) -> str:
            size = int(match.group(1)) if match.group(1) else self.num_virtual_tokens
            if size <= 0:
                raise TemplateError(f"template: soft slot {match.group(0)!r} needs a positive size")
            self.slot_sizes.append(size)
            return f"{_SOFT_OPEN}{len(self.slot_sizes) - 1}{_SOFT_CLOSE}"

        self._sources = {
            "system": SOFT_RE.sub(mark, t.system) if t.system else None,
            "user": SOFT_RE.sub(mark, t.user),
            "answer": SOFT_RE.sub(mark, t.answer),
        }
        placeholder = {v: f"{_VAR_OPEN}{v}{_VAR_CLOSE}" for v in t.variables}
        composed = self._compose(placeholder)
        first = composed.find(_VAR_OPEN)
        if first < 0:
            raise TemplateError("template: uses no row field; add e.g. {{ text }}.")
        prefix_text = composed[:first]
        # Soft slots after the first field (P-tuning style: between hard text, next to the answer) are
        # part of every row's input instead of the cached prefix.
        self.row_slots = [
            SoftSlot(int(i), self.slot_sizes[int(i)]) for i in _SOFT_SENTINEL_RE.findall(composed[first:])
        ]
        # Spaces at the end of the prefix belong to the row text, so a word keeps its leading space.
        stripped = prefix_text.rstrip(" ")
        self._moved_space = prefix_text[len(stripped) :]
        self.prefix_text = stripped
        self.prefix = [
            SoftSlot(int(p), self.slot_sizes[int(p)]) if i % 2 else p
            for i, p in enumerate(_SOFT_SENTINEL_RE.split(stripped))
            if i % 2 or p
        ]
        tail = composed.rstrip(" ")
        self.label_space = composed[len(tail) :]

    def _render(self, values: dict) -> dict:
        ctx = {**values, "labels": self.labels}
        try:
            return {k: _ENV.from_string(v).render(ctx) if v is not None else None for k, v in self._sources.items()}
        except jinja2.TemplateError as e:
            raise TemplateError(f"template: {e}") from None

    def _demo_turns(self) -> list[tuple[str, str]]:
        """(user text, answer text) per demo, soft slots left out."""
        turns = []
        for i, demo in enumerate(self.template.demos):
            missing = [v for v in self.template.variables if v not in demo]
            if missing or "label" not in demo:
                raise TemplateError(f"template demo {i + 1}: missing field {(missing or ['label'])[0]!r}")
            parts = self._render({k: _SENTINELS.sub("", str(demo[k])) for k in self.template.variables})
            word = self.words.get(str(demo["label"]), str(demo["label"]))
            turns.append((_SOFT_SENTINEL_RE.sub("", parts["user"]), _SOFT_SENTINEL_RE.sub("", parts["answer"]) + word))
        return turns

    def _compose(self, values: dict) -> str:
        parts = self._render(values)
        demos = self._demo_turns() if self.template.demos else []
        use_chat = self.template.chat and getattr(self.tokenizer, "chat_template", None)
        if use_chat:
            messages = [{"role": "system", "content": parts["system"]}] if parts["system"] else []
            for user, answer in demos:
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
            messages.append({"role": "user", "content": parts["user"]})
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return text + parts["answer"]
        head = f"{parts['system']}\n\n" if parts["system"] else ""
        if self.template.chat:  # chat asked for but the backbone has no chat template: plain layout
            shots = "".join(f"{u}\nAnswer: {a}\n\n" for u, a in demos)
            answer = parts["answer"]
            if not _SOFT_SENTINEL_RE.sub("", answer).strip():  # no answer text of its own: a plain cue
                answer = "Answer: " + answer
            return f"{head}{shots}{parts['user']}\n{answer}"
        shots = "".join(f"{u}{a}\n\n" for u, a in demos)
        return head + shots + parts["user"] + parts["answer"]

    @property
    def soft_token_count(self) -> int:
        return sum(self.slot_sizes)

    def render_row(self, fields: dict) -> str:
        """The row's part of the text: everything after the constant prefix, up to the label."""
        values = {k: _SENTINELS.sub("", str(fields[k])) for k in self.template.variables}
        full = self._compose(values)
        if not full.startswith(self.prefix_text):
            raise TemplateError(
                "template: the text before the first row field changes from row to row; keep "
                "conditionals on row fields after the first {{ field }}."
            )
        return full[len(self.prefix_text) :].rstrip(" ")

    def split_row(self, text: str) -> list[str | SoftSlot]:
        """A rendered row as hard-text pieces and the soft slots between them."""
        parts = _SOFT_SENTINEL_RE.split(text)
        return [SoftSlot(int(p), self.slot_sizes[int(p)]) if i % 2 else p for i, p in enumerate(parts) if i % 2 or p]

    def label_text(self, word: str) -> str:
        """The text of a label word as it follows the prompt (with the space the template puts before it)."""
        return self.label_space + word
