"""A template bound to a tokenizer (CompiledTemplate): the constant prefix, the per-row text, and where
the soft slots stand; and ``layout``, how rendered turns become one text (the backbone's chat template
or a plain layout). The template itself, its spec and its variables are in template.py.

While a template is rendered here, private-use characters stand in for soft slots and row fields; row
values are stripped of them (``SENTINELS``) so data can never forge a soft slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from prompttune.core.errors import TemplateError
from prompttune.core.template_sandbox import render_string

SOFT_RE = re.compile(r"\[soft(?::(\d+))?\]")
SOFT_OPEN, SOFT_CLOSE, VAR_OPEN, VAR_CLOSE = "\ue000", "\ue001", "\ue002", "\ue003"
SENTINELS = re.compile("[\ue000-\ue003]")
SOFT_SENTINEL_RE = re.compile(f"{SOFT_OPEN}(\\d+){SOFT_CLOSE}")


def layout(system: str | None, turns: list, user: str, answer: str, tokenizer, chat: bool) -> str:
    """The turns as one text: the backbone's chat template, or a plain layout when it has none."""
    if chat and tokenizer is not None and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": r, "content": c} for r, c in turns] + [{"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + answer
    head = f"{system}\n\n" if system else ""
    if chat:  # chat asked for but the backbone has no chat template: plain layout with an answer cue
        shots = "".join(f"{c}\n" if r == "user" else f"Answer: {c}\n\n" for r, c in turns)
        if not SOFT_SENTINEL_RE.sub("", answer).strip():  # no answer text of its own: a plain cue
            answer = "Answer: " + answer
        return f"{head}{shots}{user}\n{answer}"
    shots = "".join(c if r == "user" else f"{c}\n\n" for r, c in turns)
    return head + shots + user + answer


SOFT_LIKE_RE = re.compile(r"\[soft(?![A-Za-z_])[^\]\n]*\]?")  # anything that starts like a soft slot


def check_soft_slots(part: str, text: str | None) -> None:
    """A soft slot written wrong ('[soft:x]', '[soft 4]', '[soft:0]', unclosed) is an error at its position."""
    for m in SOFT_LIKE_RE.finditer(text or ""):
        ok = SOFT_RE.fullmatch(m.group(0))
        if ok and (ok.group(1) is None or int(ok.group(1)) > 0):
            continue
        line = text.count("\n", 0, m.start()) + 1
        column = m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
        raise TemplateError(
            f"template {part}, line {line}, column {column}: {m.group(0)!r} is not a soft slot; "
            "write [soft] (the method's number of tokens) or [soft:N] with a positive size N."
        )


@dataclass
class SoftSlot:
    index: int
    size: int


@dataclass
class CompiledTemplate:
    """A template bound to a tokenizer and label words: constant prefix segments + per-row text."""

    template: Template  # noqa: F821 (template.py's Template; not imported: template.py imports this module)
    tokenizer: object
    labels: list[str]
    num_virtual_tokens: int
    words: dict = field(default_factory=dict)  # label -> the word a demo's answer shows
    prefix: list[str | SoftSlot] = field(init=False)
    label_space: str = field(init=False)

    def __post_init__(self) -> None:
        self.slot_sizes: list[int] = []

        def mark(match: re.Match) -> str:
            size = int(match.group(1)) if match.group(1) else self.num_virtual_tokens
            if size <= 0:
                raise TemplateError(f"template: soft slot {match.group(0)!r} needs a positive size")
            self.slot_sizes.append(size)
            return f"{SOFT_OPEN}{len(self.slot_sizes) - 1}{SOFT_CLOSE}"

        t = self.template
        for name, text in (("system", t.system), *((f"message {i + 1}", c) for i, (_, c) in enumerate(t.messages))):
            check_soft_slots(name, text)
        check_soft_slots("user", t.user)
        check_soft_slots("answer", t.answer)
        # The same template with soft slots turned into sentinels, rendered as a "soft" (not hard) prompt.
        self._marked = t._replace(
            system=SOFT_RE.sub(mark, t.system) if t.system else None,
            messages=tuple((r, SOFT_RE.sub(mark, c)) for r, c in t.messages),
            user=SOFT_RE.sub(mark, t.user),
            answer=SOFT_RE.sub(mark, t.answer),
        )
        placeholder = {v: f"{VAR_OPEN}{v}{VAR_CLOSE}" for v in t.variables}
        composed = self._compose(placeholder)
        first = composed.find(VAR_OPEN)
        if first < 0:
            raise TemplateError("template: uses no row field; add e.g. {{ text }}.")
        prefix_text = composed[:first]
        # Soft slots after the first field (P-tuning style: between hard text, next to the answer) are
        # part of every row's input instead of the cached prefix.
        self.row_slots = [SoftSlot(int(i), self.slot_sizes[int(i)]) for i in SOFT_SENTINEL_RE.findall(composed[first:])]
        # Spaces at the end of the prefix belong to the row text, so a word keeps its leading space.
        stripped = prefix_text.rstrip(" ")
        self._moved_space = prefix_text[len(stripped) :]
        self.prefix_text = stripped
        self.prefix = [
            SoftSlot(int(p), self.slot_sizes[int(p)]) if i % 2 else p
            for i, p in enumerate(SOFT_SENTINEL_RE.split(stripped))
            if i % 2 or p
        ]
        tail = composed.rstrip(" ")
        self.label_space = composed[len(tail) :]

    def _compose(self, values: dict) -> str:
        # Sentinels in `values` are the placeholders' own; row values were cleaned by render_row.
        t = self._marked
        ctx = {**t.context(values), "labels": self.labels}

        def render(source):
            return None if source is None else render_string(source, ctx)

        turns = [(r, render(c)) for r, c in t.messages] + t.demo_turns(ctx, self.words)
        return layout(render(t.system), turns, render(t.user), render(t.answer), self.tokenizer, t.chat)

    @property
    def soft_token_count(self) -> int:
        return sum(self.slot_sizes)

    def render_row(self, fields: dict) -> str:
        """The row's part of the text: everything after the constant prefix, up to the label."""
        values = {k: SENTINELS.sub("", str(fields[k])) for k in self.template.variables}
        full = self._compose(values)
        if not full.startswith(self.prefix_text):
            raise TemplateError(
                "template: the text before the first row field changes from row to row; keep "
                "conditionals on row fields after the first {{ field }}."
            )
        return full[len(self.prefix_text) :].rstrip(" ")

    def split_row(self, text: str) -> list[str | SoftSlot]:
        """A rendered row as hard-text pieces and the soft slots between them."""
        parts = SOFT_SENTINEL_RE.split(text)
        return [SoftSlot(int(p), self.slot_sizes[int(p)]) if i % 2 else p for i, p in enumerate(parts) if i % 2 or p]

    def label_text(self, word: str) -> str:
        """The text of a label word as it follows the prompt (with the space the template puts before it)."""
        return self.label_space + word
