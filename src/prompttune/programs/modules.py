"""Modules: a signature made into a prompt, run on an LM, its reply parsed; programs compose them.

    classify = Predict("review -> sentiment: one of positive, negative")
    with using(BackboneLM(backbone)):
        classify(review="a joy to watch").sentiment          # 'positive'

    class QA(Program):                                       # composed like a torch nn.Module
        def __init__(self):
            self.answer = ChainOfThought("context, question -> answer")
        def forward(self, context, question):
            return self.answer(context=context, question=question)

The LM is taken from ``using(lm)`` (a context variable, so threads and nested runs stay apart). A
predictor's learnable state is its instruction and its demos (rows of input and output values); the
optimizers change only that, on a copy. While ``tracing()`` is active every predictor call is recorded
(predictor, inputs, outputs): bootstrap turns passing traces into demos.

A predictor's prompt has one of two layouts (``layout``, learnable like its demos): ``chat`` (the default:
the instruction and a description of every field as the system turn, each demo as a user and an assistant
turn, through the backbone's chat template) or ``plain`` (a completion-style text, ``Review: ...`` /
``Sentiment: positive`` per demo, the instruction, if any, as its first line). Each field is shown under its
name, or under the display name ``prefixes`` gives it (DSPy's field prefix). On the 135M default decoder the
plain layout with a fitting output name ("Sentiment") and 8 demos scored 0.85 on SST-2 where the chat layout
with "label" scored 0.57-0.72 (docs/programs.md).

A reply that does not parse is asked again, up to ``max_retries`` times, with the parse error as
feedback in the user turn; after that the OutputParseError is raised.
"""

from __future__ import annotations

import contextvars
import copy
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

from prompttune.core.errors import DataError
from prompttune.programs.lm import LM, Prompt, argmax
from prompttune.programs.parse import OutputParseError, parse_reply
from prompttune.programs.reply_form import reply_form, reply_schema
from prompttune.programs.signature import Field, Signature

MAX_RETRIES = 5
MAX_DEMOS = 64  # per predictor
MAX_TOKENS = 2048  # per reply
LAYOUTS = ("chat", "plain")
MAX_PREFIX_CHARS = 64  # a field's display name
REASONING = Field("reasoning", "think step by step, in a few sentences, before the answer")

_LM: contextvars.ContextVar[LM | None] = contextvars.ContextVar("prompttune_program_lm", default=None)
_TRACE: contextvars.ContextVar[list | None] = contextvars.ContextVar("prompttune_program_trace", default=None)


@contextmanager
def using(lm: LM) -> Iterator[LM]:
    """Run programs on ``lm`` inside the block."""
    token = _LM.set(lm)
    try:
        yield lm
    finally:
        _LM.reset(token)


def current_lm() -> LM:
    lm = _LM.get()
    if lm is None:
        raise DataError("a program ran without a language model; run it inside `with using(lm):`.")
    return lm


@contextmanager
def tracing() -> Iterator[list]:
    """Collect (predictor, inputs, outputs) for every predictor call in the block."""
    trace: list = []
    token = _TRACE.set(trace)
    try:
        yield trace
    finally:
        _TRACE.reset(token)


class Prediction(dict):
    """Output values by field name, also readable as attributes (``pred.sentiment``)."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the prediction has no field {name!r} (it has {sorted(self)})") from None


class Module:
    """A part of a program. Sub-modules are found among its attributes, like a torch nn.Module's."""

    def forward(self, **inputs) -> Prediction:
        raise NotImplementedError

    def __call__(self, **inputs) -> Prediction:
        return self.forward(**inputs)

    def batch(self, rows: list[dict]) -> list[Prediction | None]:
        """Each row's prediction, None where an output did not parse (after its retries). Rows run one by
        one here; ``Predict`` and ``Pipeline`` run them together, so a label chosen by score is scored for
        all the rows in a few batched passes (``LM.choose_many``)."""
        out: list[Prediction | None] = []
        for row in rows:
            try:
                out.append(self(**row))
            except OutputParseError:
                out.append(None)
        return out

    def named_predictors(self, prefix: str = "") -> list[tuple[str, Predict]]:
        if isinstance(self, Predict):
            return [(prefix or "self", self)]
        out = []
        for name, value in vars(self).items():
            items = enumerate(value) if isinstance(value, list | tuple) else [(None, value)]
            for i, item in items:
                if isinstance(item, Module):
                    path = f"{prefix}{name}" + (f".{i}" if i is not None else "")
                    out += item.named_predictors(path + ".") if not isinstance(item, Predict) else [(path, item)]
        return out

    def copy(self) -> Module:
        """A deep copy: optimizers change copies, never the program they were given."""
        return copy.deepcopy(self)

    def state(self) -> dict:
        return {name: p.dump_state() for name, p in self.named_predictors()}

    def load_state(self, state: dict) -> None:
        for name, predictor in self.named_predictors():
            if name not in state:
                raise DataError(f"saved program: no state for predictor {name!r} (it has {sorted(state)}).")
            predictor.set_state(state[name])


class Program(Module):
    """The base of a user's program: set modules as attributes in ``__init__``, compose them in ``forward``."""


class Predict(Module):
    """One step: the signature's inputs in, its outputs out, through one prompt."""

    module_name = "predict"

    def __init__(self, signature, instruction: str | None = None, max_retries: int = 1, max_tokens: int = 64):
        self.signature = Signature.coerce(signature)
        if instruction is not None:
            self.signature = self.signature.with_instruction(instruction)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= MAX_RETRIES:
            raise DataError(f"max_retries {max_retries!r}: give a whole number from 0 to {MAX_RETRIES}.")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS:
            raise DataError(f"max_tokens {max_tokens!r}: give a whole number from 1 to {MAX_TOKENS}.")
        self.max_retries, self.max_tokens = max_retries, max_tokens
        self.demos: list[dict] = []
        self.layout = "chat"
        self.prefixes: dict[str, str] = {}  # field name -> the name the prompt shows it under
        self.calibrate = False  # a label chosen by score: relative to its score on a content-free row
        self.offsets: dict[str, float] | None = None  # batch calibration: subtracted from the label scores

    # --- state --------------------------------------------------------------------------------------
    @property
    def instruction(self) -> str:
        return self.signature.instruction

    def dump_state(self) -> dict:
        state = {"instruction": self.instruction, "demos": [dict(d) for d in self.demos]}
        if self.layout != "chat" or self.prefixes:
            state |= {"layout": self.layout, "prefixes": dict(self.prefixes)}
        if self.calibrate:
            state["calibrate"] = True
        if self.offsets is not None:
            state["offsets"] = dict(self.offsets)
        return state

    def set_state(self, state: dict) -> None:
        """Instruction and demos; ``layout`` and ``prefixes`` where given (else kept as they are)."""
        demos = state.get("demos", [])
        if not isinstance(demos, list) or len(demos) > MAX_DEMOS or not all(isinstance(d, dict) for d in demos):
            raise DataError(f"saved program: 'demos' must be a list of at most {MAX_DEMOS} objects.")
        layout = state.get("layout", self.layout)
        prefixes = state.get("prefixes", self.prefixes)
        check_layout(layout, prefixes, self.signature)
        calibrate = state.get("calibrate", self.calibrate)
        if not isinstance(calibrate, bool):
            raise DataError(f"program step: calibrate {calibrate!r} must be true or false.")
        offsets = check_offsets(state.get("offsets", self.offsets), self.outputs[-1].options or None)
        if offsets is not None and calibrate:
            raise DataError("program step: 'calibrate' (content-free) and 'offsets' (batch) exclude each other.")
        self.calibrate, self.offsets = calibrate, offsets
        self.signature = self.signature.with_instruction(str(state.get("instruction", "")))
        self.demos = [dict(d) for d in demos]
        self.layout, self.prefixes = layout, dict(prefixes)

    # --- the prompt ---------------------------------------------------------------------------------
    @property
    def outputs(self) -> tuple[Field, ...]:
        return self.signature.outputs

    def shown(self, name: str) -> str:
        """The name a field is shown under: its prefix, else (plain layout) its name written as a heading."""
        if name in self.prefixes:
            return self.prefixes[name]
        return name.replace("_", " ").capitalize() if self.layout == "plain" else name

    def system_text(self) -> str:
        if self.layout == "plain":
            return self.instruction
        sig, outs = self.signature, self.outputs
        head = sig.instruction or (
            f"Given the fields {', '.join(sig.input_names)}, produce the fields {', '.join(f.name for f in outs)}."
        )
        lines = [head, "", "Input fields:"]
        lines += [f"- {f.describe()}" for f in sig.inputs]
        lines += ["Output fields:"] + [f"- {f.describe()}" for f in outs]
        order = ", ".join(f"'{f.name}: ...'" for f in outs)
        lines += ["", f"Reply with one line per output field, in this order: {order}."]
        return "\n".join(lines)

    def user_text(self, values: dict, feedback: str = "") -> str:
        text = "\n".join(f"{self.shown(f.name)}: {_show(values[f.name])}" for f in self.signature.inputs)
        return f"{text}\n\n(Your previous reply could not be read: {feedback})" if feedback else text

    def demo_turns(self) -> tuple[tuple[str, str], ...]:
        turns = []
        for demo in self.demos:
            if all(f.name in demo for f in self.signature.inputs):
                shown = [f"{self.shown(f.name)}: {_show(demo[f.name])}" for f in self.outputs if f.name in demo]
                turns.append((self.user_text(demo), "\n".join(shown)))
        return tuple(turns)

    def prompt(self, values: dict, feedback: str = "", answer: str | None = None) -> Prompt:
        single = len(self.outputs) == 1 and self.outputs[0].kind != "text"
        return Prompt(
            system=self.system_text(),
            demos=self.demo_turns(),
            user=self.user_text(values, feedback),
            answer=f"{self.shown(self.outputs[0].name)}:" if answer is None else answer,
            stop=("\n",) if single else ("\n\n",),
            plain=self.layout == "plain",
            form=reply_form(self.outputs, self.shown) if answer is None else None,
            schema=reply_schema(self.outputs, self.shown) if answer is None else None,
        )

    def content_free(self) -> Prompt | None:
        """With ``calibrate``: the prompt with every input "N/A" (Zhao et al. 2021), else None."""
        return self.prompt({f.name: "N/A" for f in self.signature.inputs}) if self.calibrate else None

    # --- running ------------------------------------------------------------------------------------
    def _values(self, inputs: dict) -> dict:
        missing = [n for n in self.signature.input_names if n not in inputs]
        if missing:
            reads = self.signature.input_names
            raise DataError(f"{self.signature}: input(s) {missing} not given; the step reads {reads}.")
        return {n: inputs[n] for n in self.signature.input_names}

    def forward(self, **inputs) -> Prediction:
        values = self._values(inputs)
        outputs = self._run(current_lm(), values)
        trace = _TRACE.get()
        if trace is not None:
            trace.append((self, values, dict(outputs)))
        return Prediction(outputs)

    def batch(self, rows: list[dict]) -> list[Prediction | None]:
        lm = current_lm()
        if not self._chooses(lm) or _TRACE.get() is not None:
            return super().batch(rows)
        last = self.outputs[-1]
        if self.offsets is not None and lm.can_score:
            return [Prediction({last.name: label}) for label in self._offset_choices(rows)]
        prompts = [self.prompt(self._values(row)) for row in rows]
        return [Prediction({last.name: c}) for c in lm.choose_many(prompts, last.options, self.content_free())]

    def option_logprobs(self, rows: list[dict]) -> tuple[tuple[str, ...], list[list[float]]] | None:
        """The answer's options and each row's log-probabilities over them (calibrated where the step is), or
        None where the step does not choose a label by score or the LM cannot give scores."""
        lm = current_lm()
        if not (self._chooses(lm) and lm.can_score):
            return None
        last = self.outputs[-1]
        prompts = [self.prompt(self._values(row)) for row in rows]
        scores = lm.option_logprobs_many(prompts, last.options, self.content_free())
        if self.offsets is not None and scores is not None:
            shift = [self.offsets[o] for o in last.options]
            scores = [[s - b for s, b in zip(row, shift, strict=True)] for row in scores]
        return last.options, scores

    def _offset_choices(self, rows: list[dict]) -> list[str]:
        """Each row's label by its score less the step's batch-calibration offsets (calibration.py)."""
        options, scores = self.option_logprobs(rows)
        return [options[argmax(row)] for row in scores]

    def _chooses(self, lm: LM) -> bool:
        """Whether the answer is a label the LM picks by score (no text generated, nothing to parse)."""
        return len(self.outputs) == 1 and self.outputs[-1].kind == "label" and lm.can_choose

    def _run(self, lm: LM, values: dict) -> dict:
        if self._chooses(lm):
            last = self.outputs[-1]
            if self.offsets is not None and lm.can_score:
                return {last.name: self._offset_choices([values])[0]}
            return {last.name: lm.choose(self.prompt(values), last.options, self.content_free())}
        return self._complete(lm, values, self.prompt)

    def _complete(self, lm: LM, values: dict, make_prompt) -> dict:
        feedback = ""
        for attempt in range(self.max_retries + 1):
            reply = lm.complete(make_prompt(values, feedback), self.max_tokens)
            try:
                return parse_reply(self.outputs, reply, self.shown)
            except OutputParseError as e:
                if attempt == self.max_retries:
                    raise OutputParseError(e.field, f"{e.expected} (after {attempt + 1} tries)", e.reply) from None
                feedback = f"{e} Reply again with '{e.field}: ...' as asked."
        raise AssertionError("unreachable")


class ChainOfThought(Predict):
    """Predict with a ``reasoning`` output before the signature's outputs.

    With a label-set answer and an LM that scores options, the reasoning is generated first and the label
    is then chosen by score after it.
    """

    module_name = "chain_of_thought"

    def __init__(self, signature, instruction: str | None = None, max_retries: int = 1, max_tokens: int = 256):
        super().__init__(signature, instruction, max_retries, max_tokens)

    @property
    def outputs(self) -> tuple[Field, ...]:
        return (REASONING, *self.signature.outputs)

    def _chooses(self, lm: LM) -> bool:
        return False  # the reasoning is generated first, row by row

    def _run(self, lm: LM, values: dict) -> dict:
        last = self.signature.outputs[-1]
        if len(self.signature.outputs) == 1 and last.kind == "label" and lm.can_choose:
            start = self.prompt(values)
            head, out = f"{self.shown('reasoning')}:", f"{self.shown(last.name)}:"
            probe = replace(start, answer=head, stop=(f"\n{out}", "\n\n"))
            reasoning = lm.complete(probe, self.max_tokens)[len(head) :].strip()
            answer = f"{head} {reasoning}\n{out}"
            return {"reasoning": reasoning, last.name: lm.choose(self.prompt(values, answer=answer), last.options)}
        return self._complete(lm, values, self.prompt)


def check_layout(layout, prefixes, signature: Signature) -> None:
    """A layout and display names a predictor can take; the error names what is wrong."""
    if layout not in LAYOUTS:
        raise DataError(f"program step: layout {layout!r} is not one of {', '.join(LAYOUTS)}.")
    if not isinstance(prefixes, dict):
        raise DataError("program step: 'prefixes' must map field names to the names the prompt shows.")
    fields = {*signature.input_names, *signature.output_names, REASONING.name}
    for name, shown in prefixes.items():
        if name not in fields:
            raise DataError(f"program step: prefix for {name!r}, which is not a field of {signature}.")
        ok = isinstance(shown, str) and shown.strip() and "\n" not in shown and ":" not in shown
        if not ok or len(shown) > MAX_PREFIX_CHARS:
            raise DataError(
                f"program step: the prefix of {name!r} ({shown!r}) must be one line of text without ':', "
                f"at most {MAX_PREFIX_CHARS} characters."
            )


def check_offsets(offsets, options: Sequence[str] | None) -> dict[str, float] | None:
    """``offsets`` as saved (a mapping of every label to a finite number) or None; the error names what is wrong."""
    if offsets is None:
        return None
    if not isinstance(offsets, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in offsets.values()
    ):
        raise DataError("program step: 'offsets' must map each label to a finite number (batch calibration).")
    if options is None or sorted(offsets) != sorted(options):
        raise DataError(
            f"program step: 'offsets' has labels {sorted(offsets)}; the step's answer takes "
            f"{sorted(options or [])}: give one number per label, or drop 'offsets'."
        )
    return {str(k): float(v) for k, v in offsets.items()}


def _show(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


MODULES = {cls.module_name: cls for cls in (Predict, ChainOfThought)}
