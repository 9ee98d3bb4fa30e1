"""Chains: templates run in order, each step's generated text becoming a variable of the later steps.

A chain file (YAML or JSON)::

    inputs: [article, question]          # optional: the variables the caller must give (--var)
    steps:
      - name: summary                    # the step's output is the variable `summary`
        template: summarize              # built-in name, template file (relative to the chain file),
                                         # registry reference (name@production), or an inline template
        with: {text: "{{ article }}"}    # optional: fill template variables from expressions
        max_new_tokens: 80               # optional; also temperature, stop: ["\\n\\n"]
      - name: answer
        template: {user: "Summary: {{ summary }}\\nQuestion: {{ question }}", answer: "Answer:"}
    output: answer                       # optional: the last step by default

Every variable of every step is checked against the inputs and earlier outputs before anything runs;
errors name the file, the step and the variable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prompttune.core.errors import DataError, PromptTuneError
from prompttune.core.generate import GenerationConfig
from prompttune.core.template import NAME_RE, Template
from prompttune.core.template_sandbox import parse, render_string

DEFAULT_MAX_NEW_TOKENS = 128  # a step's token limit when neither the step nor --max-new-tokens gives one
STEP_KEYS = {"name", "template", "with", "max_new_tokens", "temperature", "stop"}


class ChainError(PromptTuneError):
    """A chain file that cannot run: its steps, templates or variables do not fit together."""


@dataclass
class Step:
    name: str
    template: Template
    inputs: dict[str, str] = field(default_factory=dict)  # template variable -> expression over chain values
    max_new_tokens: int | None = None
    temperature: float = 0.0
    stop: list[str] = field(default_factory=list)

    def expression_variables(self) -> set[str]:
        from jinja2 import meta

        names: set[str] = set()
        for expr in self.inputs.values():
            names |= meta.find_undeclared_variables(parse(expr))
        return names

    def needs(self) -> set[str]:
        """The chain values this step reads."""
        return (set(self.template.variables) - set(self.inputs)) | self.expression_variables()

    def values(self, chain_values: dict) -> dict:
        vals = {v: chain_values[v] for v in self.template.used_variables if v in chain_values}
        vals |= {k: render_string(expr, chain_values) for k, expr in self.inputs.items()}
        return vals


Generator = Callable[[Step, dict], str]


@dataclass
class Chain:
    path: str
    steps: list[Step]
    inputs: list[str] | None = None
    output: str | None = None

    @classmethod
    def load(cls, path: str | Path, db: str | None = None) -> Chain:
        path = Path(path)
        if not path.is_file():
            raise ChainError(f"{path}: chain file not found.")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix == ".json":
                raw = json.loads(text)
            else:
                import yaml

                raw = yaml.safe_load(text)
        except Exception as e:  # json / yaml parse errors
            raise ChainError(f"{path}: cannot be parsed ({e}).") from None
        return cls.from_dict(raw, str(path), path.parent, db)

    @classmethod
    def from_dict(cls, raw, where: str = "chain", base: Path | None = None, db: str | None = None) -> Chain:
        if not isinstance(raw, dict) or not isinstance(raw.get("steps"), list) or not raw["steps"]:
            raise ChainError(f"{where}: expected a mapping with a non-empty 'steps' list.")
        unknown = set(raw) - {"inputs", "steps", "output", "description"}
        if unknown:
            raise ChainError(f"{where}: unknown keys {sorted(unknown)}; expected inputs, steps, output, description.")
        inputs = raw.get("inputs")
        if inputs is not None and not (isinstance(inputs, list) and all(isinstance(i, str) for i in inputs)):
            raise ChainError(f"{where}: 'inputs' must be a list of variable names.")
        steps = []
        for i, spec in enumerate(raw["steps"], start=1):
            steps.append(_step(spec, f"{where}, step {i}", base, db))
        names = [s.name for s in steps]
        for name in names:
            if names.count(name) > 1:
                raise ChainError(f"{where}: two steps are named {name!r}; step names must be unique.")
            if inputs and name in inputs:
                raise ChainError(f"{where}: step {name!r} has the name of an input; rename one.")
        output = raw.get("output")
        if output is not None and output not in names:
            raise ChainError(f"{where}: output {output!r} is not a step name ({', '.join(names)}).")
        return cls(where, steps, inputs, output)

    def check(self, values: dict) -> None:
        """Every variable given, produced before it is read, and every given value used."""
        if self.inputs is not None:
            for name in self.inputs:
                if name not in values:
                    raise ChainError(f"{self.path}: missing input variable {name!r}; pass --var {name}=...")
            for name in values:
                if name not in self.inputs:
                    raise ChainError(
                        f"{self.path}: --var {name}: not an input of the chain ({', '.join(self.inputs)})."
                    )
        available = set(values)
        read: set[str] = set()
        for i, step in enumerate(self.steps, start=1):
            where = f"{self.path}, step {i} ({step.name})"
            for name in sorted(step.needs()):
                if name not in available:
                    later = [s.name for s in self.steps[i:]]
                    hint = " (a later step makes it; reorder the steps)" if name in later else ""
                    raise ChainError(
                        f"{where}: variable {name!r} is neither an input nor an earlier step's output{hint}."
                    )
            read |= step.needs() | (step.template.used_variables & available)
            available.add(step.name)
        for name in sorted(set(values) - read):
            raise ChainError(f"{self.path}: variable {name!r} is given but no step uses it.")

    def run(self, values: dict, generate: Generator) -> dict:
        self.check(values)
        chain_values = dict(values)
        outputs: dict[str, str] = {}
        for i, step in enumerate(self.steps, start=1):
            try:
                text = generate(step, step.values(chain_values))
            except PromptTuneError as e:
                raise ChainError(f"{self.path}, step {i} ({step.name}): {e}") from None
            outputs[step.name] = chain_values[step.name] = text.strip()
        final = self.output or self.steps[-1].name
        return {"steps": outputs, "output": outputs[final]}


def _step(spec, where: str, base: Path | None, db: str | None) -> Step:
    if not isinstance(spec, dict) or "name" not in spec or "template" not in spec:
        raise ChainError(f"{where}: a step needs 'name' and 'template'.")
    unknown = set(spec) - STEP_KEYS
    if unknown:
        raise ChainError(f"{where}: unknown keys {sorted(unknown)}; expected {', '.join(sorted(STEP_KEYS))}.")
    name = spec["name"]
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ChainError(f"{where}: step name {name!r} must be an identifier (it becomes a variable).")
    where = f"{where} ({name})"
    try:
        template = _template(spec["template"], base, db)
    except PromptTuneError as e:
        raise ChainError(f"{where}: {e}") from None
    inputs = _with(spec.get("with") or {}, where)
    for var in inputs:
        if var not in template.used_variables:
            raise ChainError(f"{where}: 'with' sets variable {var!r}, which the template does not use.")
    max_new, temperature, stop = spec.get("max_new_tokens"), spec.get("temperature", 0.0), spec.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ChainError(f"{where}: 'stop' must be a string or a list of strings, e.g. stop: [\"\\n\"].")
    max_new = int(max_new) if isinstance(max_new, str) and max_new.strip().isdigit() else max_new
    try:
        temperature = float(temperature) if isinstance(temperature, str) else temperature
    except ValueError:
        pass  # GenerationConfig names it
    try:  # the settings checked now, before any model loads
        GenerationConfig(max_new_tokens=1 if max_new is None else max_new, temperature=temperature, stop=tuple(stop))
    except DataError as e:
        raise ChainError(f"{where}: {re.sub(r' [(]--[a-z-]+[)]', '', str(e))}") from None
    return Step(name, template, dict(inputs), max_new, temperature, list(stop))


def _with(inputs, where: str) -> dict[str, str]:
    """'with': template variable -> expression. Numbers and booleans are taken as their text (2 -> "2")."""
    if not isinstance(inputs, dict):
        raise ChainError(
            f"{where}: 'with' must map template variables to text, e.g. with: {{text: \"{{{{ article }}}}\"}}."
        )
    out = {}
    for var, value in inputs.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, int | float):
            value = str(value)
        if not isinstance(value, str):
            what = "nothing" if value is None else f"a {type(value).__name__}"
            raise ChainError(f"{where}: 'with' {var}: give text or a number, not {what} (quote it: {var}: \"...\").")
        out[str(var)] = value
    return out


def _template(spec, base: Path | None, db: str | None) -> Template:
    if isinstance(spec, dict):
        return Template.from_dict(spec, "inline template")
    if not isinstance(spec, str):
        raise ChainError(f"template must be a name, a file or a mapping, not {type(spec).__name__}")
    if base is not None and (base / spec).is_file():
        return Template.from_spec(str(base / spec))
    from prompttune.registry.names import looks_like_ref
    from prompttune.registry.resolve import resolve_prompt

    if not looks_like_ref(spec):
        return Template.from_spec(spec)  # a built-in name or a template file (or an error naming the built-ins)
    kind, target, _ = resolve_prompt(spec, db)
    if kind != "template":
        raise ChainError(f"template {spec!r} is a soft-prompt artifact; a chain step needs a template.")
    return target


def backbone_generator(
    model: str | None = None, max_new_tokens: int | None = None, dtype: str | None = None, device: str | None = None
) -> Generator:
    """Generation over the backbone from each step's hard template (its soft slots left out); the backbone
    (``model``, ``dtype``, ``device``) loads at the first step.

    A step that reaches its token limit mid-sentence ends the sentence (GenerationConfig.finish_sentence).
    """
    from prompttune.core.backbone import Backbone, set_threads
    from prompttune.core.generate import GenerationConfig
    from prompttune.core.generate import Generator as TextGenerator

    if max_new_tokens is not None:  # --max-new-tokens checked before the model loads
        GenerationConfig(max_new_tokens=max_new_tokens)
    set_threads()
    state: dict = {}

    def generate(step: Step, values: dict) -> str:
        if "generator" not in state:
            state["generator"] = TextGenerator(Backbone.load(model, dtype=dtype, device=device))
        n = max_new_tokens or step.max_new_tokens or DEFAULT_MAX_NEW_TOKENS  # None: the next one
        config = GenerationConfig(max_new_tokens=n, temperature=step.temperature, stop=step.stop, finish_sentence=True)
        return state["generator"].complete(step.template, values, config)

    return generate
