"""The form of a step's reply as a grammar, so a model that can be held to one always writes a reply that parses.

A step's reply is one ``name: value`` line per output field, in order, after the prompt's answer start (the
first field's name and colon, ``Prompt.answer``). As a Lark grammar (llguidance's dialect): a space, the first
value, then for every later field a newline, its name as shown, a colon, a space and its value, where a value is

- label: one of its options, exactly;
- number: an integer or a decimal (``-12``, ``0.5``; at most 18 digits, and 12 after the point, so that a model
  cannot write digits until its token limit);
- json: any JSON value (llguidance's ``%json``);
- text: one line of 1 to 1,000 characters (a chain of thought's reasoning: one paragraph).

``headed`` puts the answer's start in front, for a server's chat route, whose reply starts from nothing.

A reply of text fields only is not held (nothing in it can fail to parse, and text may run over lines). The
in-process backbone holds a generated reply to the form (``BackboneLM.complete``), a server does where it is
sent as vLLM's ``guided_grammar`` (``OpenAILM(guided=True)``); other LMs get the same prompt without it and their
replies are parsed, with retries, as before.
"""

from __future__ import annotations

import json

from prompttune.programs.signature import Field

_VALUE = {
    "number": r"/-?[0-9]{1,18}(\.[0-9]{1,12})?/",
    "json": "%json { }",
    "text": r"/[^\n]{1,1000}/",
}


def reply_form(outputs: tuple[Field, ...], shown=lambda name: name) -> str | None:
    """The Lark grammar of the text generated after ``shown(outputs[0].name) + ':'``; None: not held."""
    if all(f.kind == "text" for f in outputs):
        return None
    rules, seq = [], ['" "', "v0"]
    for i, f in enumerate(outputs):
        if i:
            seq += [_literal("\n" + shown(f.name) + ": "), f"v{i}"]
        if f.kind == "label":
            value = " | ".join(_literal(o) for o in f.options)
        else:
            value = _VALUE[f.kind]
        rules.append(f"v{i}: {value}")
    return "\n".join(["start: " + " ".join(seq), *rules]) + "\n"


def headed(form: str, head: str) -> str:
    """The form with ``head`` (the answer's start, e.g. ``sentiment:``) written before its first value."""
    first, rest = form.split("\n", 1)
    if not first.startswith("start: ") or not head:
        return form
    return f"start: {_literal(head)} {first[len('start: ') :]}\n{rest}"


def _literal(text: str) -> str:
    """A Lark string literal (JSON's escapes are Lark's)."""
    return json.dumps(text, ensure_ascii=False)
