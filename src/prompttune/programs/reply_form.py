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

``reply_schema`` is the same form as a JSON Schema, for servers that take OpenAI's ``response_format`` but no
grammar (OpenAI, llama.cpp's server, Ollama, SGLang, vLLM): one object whose keys are the fields' names as the
prompt shows them, in order (a label an ``enum`` of its options, a number a string of digits as in the grammar,
JSON any value, text a string of at most 1,000 characters: a JSON ``number`` would let a small model write digits
until its token limit). ``lines_from_json`` writes such a reply back as the ``name: value`` lines the
parser reads.

A reply of text fields only is not held (nothing in it can fail to parse, and text may run over lines). The
in-process backbone holds a generated reply to the form (``BackboneLM.complete``), a server does where it is
sent as vLLM's ``guided_grammar`` or as ``response_format`` (``OpenAILM(guided="grammar"|"json")``); other
LMs get the same prompt without it and their replies are parsed, with retries, as before.
"""

from __future__ import annotations

import json

from prompttune.programs.signature import Field

_NUMBER = r"-?[0-9]{1,18}(\.[0-9]{1,12})?"  # at most 18 digits, 12 after the point: in the grammar and the schema
NUMBER_PATTERN = f"^{_NUMBER}$"
_VALUE = {
    "number": f"/{_NUMBER}/",
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


def reply_schema(outputs: tuple[Field, ...], shown=lambda name: name) -> str | None:
    """The reply's form as a JSON Schema (its JSON text: prompts are frozen and hashable); None: not held."""
    if all(f.kind == "text" for f in outputs):
        return None
    props = {shown(f.name): _schema_of(f) for f in outputs}
    return json.dumps(
        {"type": "object", "properties": props, "required": list(props), "additionalProperties": False},
        ensure_ascii=False,
    )


def _schema_of(field: Field) -> dict:
    if field.kind == "label":
        return {"type": "string", "enum": list(field.options)}
    if field.kind == "number":  # digits bounded as in the grammar: a JSON number could run to the token limit
        return {"type": "string", "pattern": NUMBER_PATTERN}
    if field.kind == "json":
        return {}
    return {"type": "string", "maxLength": 1000}


def lines_from_json(reply: str, schema: str) -> str | None:
    """A reply that is the JSON object ``schema`` asks for, as ``name: value`` lines in the schema's order (JSON
    values as compact JSON); None where the reply is not such an object (a server that ignored the schema)."""
    try:
        value = json.loads(reply)
    except json.JSONDecodeError:
        return None
    keys = list(json.loads(schema)["properties"])
    if not isinstance(value, dict) or not any(k in value for k in keys):
        return None
    lines = []
    for key in keys:
        if key in value:
            item = value[key]
            lines.append(f"{key}: {item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)}")
    return "\n".join(lines)


def headed(form: str, head: str) -> str:
    """The form with ``head`` (the answer's start, e.g. ``sentiment:``) written before its first value."""
    first, rest = form.split("\n", 1)
    if not first.startswith("start: ") or not head:
        return form
    return f"start: {_literal(head)} {first[len('start: ') :]}\n{rest}"


def _literal(text: str) -> str:
    """A Lark string literal (JSON's escapes are Lark's)."""
    return json.dumps(text, ensure_ascii=False)
