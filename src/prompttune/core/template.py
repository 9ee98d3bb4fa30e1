"""Templates: how a row becomes the text the model reads, and where soft tokens and the label go.

Syntax (shared by soft-prompt training and the hard-prompt tools: registry, chains, agents, RAG):
- ``{{ name }}`` inserts a variable (a row's field, a ``--var``, a chain step's output); templates are
  Jinja2 rendered in an immutable sandbox, so a template cannot reach Python objects, files or the
  environment, and every render is bounded in size, time and depth (template_limits.py names the
  limits). ``{{ labels }}`` is the list of label words (``{{ labels | join(', ') }}``). Single braces
  and JSON are literal text.
- ``[soft]`` (the method's number of virtual tokens) or ``[soft:N]`` marks where trainable soft
  tokens stand (P-tuning style when after a variable); hard-prompt rendering leaves them out.
- ``[label]`` marks where the answer goes, in a one-string template; it must come last.
- Roles: ``system``, earlier ``messages`` (user / assistant turns), ``user``, and ``answer`` (what the
  assistant's reply starts with), laid out by the backbone's own chat template.
- ``variables`` names the variables (with a description and an optional default); a declared
  variable the text never uses, or a used one not declared, is an error. ``partial`` binds some.

A template is rendered once with placeholder values to find its *constant prefix*: everything before the
first row field (system text, soft tokens, instructions). That prefix is the same for every row, so
its keys/values are computed once per step in training and once per artifact at inference. The
compiled form and the chat layout are in compiled_template.py (importable from here).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

from jinja2 import meta

from prompttune.core.compiled_template import SENTINELS as _SENTINELS
from prompttune.core.compiled_template import SOFT_RE, CompiledTemplate, SoftSlot, layout
from prompttune.core.compiled_template import SOFT_SENTINEL_RE as _SOFT_SENTINEL_RE
from prompttune.core.errors import TemplateError
from prompttune.core.template_sandbox import parse as _parse
from prompttune.core.template_sandbox import render_string

__all__ = ["BUILTIN", "NAME_RE", "CompiledTemplate", "SoftSlot", "Template", "dump_yaml", "layout"]

LABEL_MARK = "[label]"
AUTO_VARIABLES = frozenset({"labels"})
ROLES = ("user", "assistant")
SPEC_KEYS = ("user", "system", "answer", "chat", "demos", "messages", "variables", "partial", "description")
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # used with fullmatch: "$" would accept a trailing newline


def _load_builtin() -> dict[str, dict]:
    import yaml

    text = (resources.files("prompttune") / "resources" / "templates.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


BUILTIN: dict[str, dict] = _load_builtin()


def _variables_spec(raw, where: str) -> tuple:
    """``variables:`` as ((name, description, default or None), ...)."""
    if raw is None:
        return ()
    if isinstance(raw, list):
        raw = {name: "" for name in raw}
    if not isinstance(raw, dict):
        raise TemplateError(f"{where}: 'variables' must map each name to a description or {{description, default}}.")
    out = []
    for name, spec in raw.items():
        if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in AUTO_VARIABLES:
            raise TemplateError(f"{where}: variable name {name!r} must be a plain identifier other than 'labels'.")
        if isinstance(spec, dict):
            unknown = set(spec) - {"description", "default"}
            if unknown:
                raise TemplateError(f"{where}: variable {name!r} has unknown keys {sorted(unknown)}")
            default = spec.get("default")
            out.append((name, str(spec.get("description", "")), None if default is None else str(default)))
        else:
            out.append((name, "" if spec is None else str(spec), None))
    return tuple(out)


def _messages_spec(raw, where: str) -> tuple:
    if not raw:
        return ()
    ok = isinstance(raw, list) and all(
        isinstance(m, dict) and set(m) == {"role", "content"} and m["role"] in ROLES and isinstance(m["content"], str)
        for m in raw
    )
    if not ok:
        raise TemplateError(
            f"{where}: 'messages' must be a list of {{role: user|assistant, content: text}} turns "
            "(the system text goes in 'system', the last user turn in 'user')."
        )
    return tuple((m["role"], m["content"]) for m in raw)


@dataclass(frozen=True)
class Template:
    """A prompt template: optional system text, earlier turns, the user turn, and the answer's start.

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
    messages: tuple = ()  # fixed earlier turns: ((role, content), ...), rendered with the variables
    declared: tuple = ()  # named variables: ((name, description, default or None), ...); () = not declared
    bound: tuple = ()  # partial application: ((name, value), ...)
    description: str = ""

    def __post_init__(self) -> None:
        used = self.used_variables
        if self.declared:
            names = {n for n, _, _ in self.declared}
            for name in sorted(names - used):
                raise TemplateError(f"template: variable {name!r} is declared but the text never uses it.")
            for name in sorted(used - names):
                raise TemplateError(f"template: variable {name!r} is used but not declared; add it under 'variables'.")
        for name, _ in self.bound:
            if name not in used:
                raise TemplateError(f"template: partial value for {name!r}, a variable the template does not use.")

    @classmethod
    def from_spec(cls, spec: str | dict | Template | None, fields: tuple[str, ...] = ("text",)) -> Template:
        """A built-in name, a .json/.yaml file path, a dict, or a one-string template ending in ``[label]``."""
        if isinstance(spec, Template):
            return spec
        if spec is None:
            spec = {("text_a", "text_b"): "classify-pair", ("question", "passage"): "qa-yes-no"}.get(fields, "classify")
        if isinstance(spec, dict):
            return cls.from_dict(spec)
        if spec in BUILTIN:
            return cls.from_dict(BUILTIN[spec], f"built-in template {spec!r}")
        if spec.endswith((".json", ".yaml", ".yml")) and Path(spec).is_file():
            return cls.from_file(Path(spec))
        if LABEL_MARK not in spec:
            raise TemplateError(
                f"template {spec!r}: not a built-in name ({', '.join(BUILTIN)}), a template file, and has no "
                f"{LABEL_MARK} marker. A one-string template looks like 'Review: {{{{ text }}}}\\nSentiment: [label]'."
            )
        before, _, after = spec.partition(LABEL_MARK)
        if after.strip():
            raise TemplateError(f"template: text after {LABEL_MARK} ({after.strip()!r}); the label must come last.")
        return cls(user=before, chat=False)

    @classmethod
    def from_file(cls, path: Path) -> Template:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as e:
                raise TemplateError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        else:
            import yaml

            try:
                raw = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise TemplateError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise TemplateError(f"{path}: expected a mapping with at least 'user', got {type(raw).__name__}")
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, spec: dict, where: str = "template") -> Template:
        spec = dict(spec)
        if "assistant" in spec and "answer" not in spec:  # the role's name works too
            spec["answer"] = spec.pop("assistant")
        unknown = set(spec) - set(SPEC_KEYS)
        if unknown or "user" not in spec:
            raise TemplateError(
                f"{where}: expected keys user (required), system, answer, chat, demos, messages, variables, "
                f"partial, description; got {sorted(spec)}"
            )
        for key in ("user", "system", "answer"):
            if spec.get(key) is not None and not isinstance(spec[key], str):
                raise TemplateError(f"{where}: {key!r} must be text, got {type(spec[key]).__name__}")
        partial = spec.get("partial") or {}
        if not isinstance(partial, dict):
            raise TemplateError(f"{where}: 'partial' must map variable names to values")
        try:
            return cls(
                user=spec["user"],
                system=spec.get("system"),
                answer=spec.get("answer") or "",
                chat=bool(spec.get("chat", True)),
                demos=tuple(dict(d) for d in spec.get("demos") or ()),
                messages=_messages_spec(spec.get("messages"), where),
                declared=_variables_spec(spec.get("variables"), where),
                bound=tuple((str(k), str(v)) for k, v in partial.items()),
                description=str(spec.get("description") or ""),
            )
        except TemplateError as e:
            raise TemplateError(str(e).replace("template:", f"{where}:", 1)) from None

    def to_dict(self) -> dict:
        """The spec form (what from_spec reads back); keys that hold their default are left out."""
        d: dict = {"description": self.description} if self.description else {}
        if self.declared:
            d["variables"] = {
                n: {"description": desc, "default": dflt} if dflt is not None else desc
                for n, desc, dflt in self.declared
            }
        d |= {"system": self.system}
        if self.messages:
            d["messages"] = [{"role": r, "content": c} for r, c in self.messages]
        d |= {"user": self.user, "answer": self.answer, "chat": self.chat, "demos": [dict(x) for x in self.demos]}
        if self.bound:
            d["partial"] = dict(self.bound)
        return d

    # --- variables ------------------------------------------------------------------------------
    def sources(self) -> list[str]:
        return [self.system or "", *(c for _, c in self.messages), self.user, self.answer]

    @cached_property
    def used_variables(self) -> frozenset[str]:
        """Every variable the text uses (auto variables such as ``labels`` excluded)."""
        names: set[str] = set()
        for part in self.sources():
            names |= meta.find_undeclared_variables(_parse(part))
        return frozenset(names - AUTO_VARIABLES)

    @property
    def defaults(self) -> dict[str, str]:
        return {n: d for n, _, d in self.declared if d is not None}

    @cached_property
    def variables(self) -> frozenset[str]:
        """The variables a row (or --var) must give: used ones without a default or a partial value."""
        return self.used_variables - set(self.defaults) - {n for n, _ in self.bound}

    def context(self, values: dict) -> dict:
        """Defaults, then partial values, then the given values."""
        return {**self.defaults, **dict(self.bound), **values}

    def check_values(self, values: dict, where: str = "--var") -> None:
        """Every needed variable given, and none given that the template does not use."""
        for name in sorted(self.variables):
            if name not in values:
                raise TemplateError(f"{where}: missing variable {name!r} (the template uses it).")
        for name in sorted(values):
            if name not in self.used_variables:
                raise TemplateError(
                    f"{where}: variable {name!r} is not used by the template "
                    f"(it uses: {', '.join(sorted(self.used_variables)) or 'none'})."
                )

    def partial(self, **values) -> Template:
        """A copy with some variables bound; binding one the template does not use is an error."""
        for name in values:
            if name not in self.used_variables:
                raise TemplateError(f"partial: variable {name!r} is not used by the template.")
        bound = {**dict(self.bound), **{k: str(v) for k, v in values.items()}}
        return self._replace(bound=tuple(bound.items()))

    def _replace(self, **changes) -> Template:
        from dataclasses import replace

        return replace(self, **changes)

    def hard(self) -> Template:
        """The same template with its soft slots left out (for methods that train nothing)."""
        return self._replace(
            system=SOFT_RE.sub("", self.system) if self.system is not None else None,
            messages=tuple((r, SOFT_RE.sub("", c)) for r, c in self.messages),
            user=SOFT_RE.sub("", self.user),
            answer=SOFT_RE.sub("", self.answer),
        )

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    # --- use -----------------------------------------------------------------------------------------
    def compile(
        self, tokenizer, labels: list[str], num_virtual_tokens: int, words: dict[str, str] | None = None
    ) -> CompiledTemplate:
        return CompiledTemplate(self, tokenizer, labels, num_virtual_tokens, words or {})

    def with_demos(self, demos: list[dict]) -> Template:
        return self._replace(demos=tuple(dict(d) for d in demos))

    def render_parts(self, values: dict, labels: list[str] = (), words: dict | None = None, hard: bool = True):
        """(system, earlier turns, user, answer start) rendered; ``hard`` leaves soft slots out."""
        clean = {k: _SENTINELS.sub("", str(v)) for k, v in values.items()}
        ctx = {**self.context(clean), "labels": list(labels)}

        def render(source: str | None, extra: dict | None = None) -> str | None:
            if source is None:
                return None
            return render_string(SOFT_RE.sub("", source) if hard else source, {**ctx, **(extra or {})})

        turns = [(r, render(c)) for r, c in self.messages] + self.demo_turns(ctx, words)
        return render(self.system), turns, render(self.user), render(self.answer)

    def demo_turns(self, ctx: dict, words: dict | None = None) -> list[tuple[str, str]]:
        """(user, assistant) turns per demo, soft slots left out; the answer shows the label's word."""
        turns = []
        for i, demo in enumerate(self.demos):
            missing = [v for v in self.variables if v not in demo]
            if missing or "label" not in demo:
                raise TemplateError(f"template demo {i + 1}: missing field {(missing or ['label'])[0]!r}")
            dctx = {**ctx, **{k: _SENTINELS.sub("", str(v)) for k, v in demo.items() if k != "label"}}
            user, answer = (
                _SOFT_SENTINEL_RE.sub("", render_string(SOFT_RE.sub("", src), dctx)) for src in (self.user, self.answer)
            )
            word = (words or {}).get(str(demo["label"]), str(demo["label"]))
            turns += [("user", user), ("assistant", answer + word)]
        return turns

    def render_messages(self, values: dict, labels: list[str] = ()) -> tuple[list[dict], str]:
        """(chat messages, the text the answer starts with) as a hard prompt: soft slots left out."""
        system, turns, user, answer = self.render_parts(values, labels)
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": r, "content": c} for r, c in turns] + [{"role": "user", "content": user}]
        return messages, answer

    def render(self, values: dict, tokenizer=None, labels: list[str] = ()) -> str:
        """The full hard-prompt text, through ``tokenizer``'s chat template when it has one."""
        self.check_values(values, "render")
        return layout(*self.render_parts(values, labels), tokenizer, self.chat)


def dump_yaml(obj) -> str:
    """YAML with multi-line text as ``|`` blocks, so a template reads as it renders."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value: str):
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, text)
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
