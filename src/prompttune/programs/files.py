"""Programs as files: a YAML list of steps in, a JSON program (instructions + demos) out. Never pickled.

A program file (YAML or JSON)::

    steps:
      - name: classify                          # optional; step1, step2, ... by default
        signature: "text -> label: one of positive, negative"
        module: predict                         # or chain_of_thought
        instruction: "Classify the review's sentiment."
        max_retries: 1                          # optional
        max_tokens: 64                          # optional
        layout: plain                           # optional: chat (default) or plain ("Review: ...\nSentiment:")
        prefixes: {text: Review, label: Sentiment}   # optional: the names the prompt shows fields under

Each step reads its inputs from the row and the outputs of the steps before it. ``ensemble:`` listing 2-8 such
programs (each with its ``steps``) is one program whose members' answers combine (ensemble.py). A signature string
alone (``'text -> label'``) is a one-step program. A saved program (``program.json`` in an optimize
output folder) holds the same steps with their demos, plus the optimizer's score and history.
"""

from __future__ import annotations

import json
from pathlib import Path

from prompttune.core import atomic
from prompttune.core.errors import DataError
from prompttune.programs.ensemble import Ensemble
from prompttune.programs.modules import MODULES, Predict, Prediction, Program
from prompttune.programs.signature import Signature

FORMAT = "prompttune-program"
VERSION = 1
PROGRAM_FILE = "program.json"
MAX_STEPS = 16
MAX_FILE_BYTES = 20_000_000
STEP_KEYS = {
    "name",
    "signature",
    "module",
    "instruction",
    "max_retries",
    "max_tokens",
    "demos",
    "layout",
    "prefixes",
    "calibrate",
    "offsets",
}


class Pipeline(Program):
    """Steps run in order over one namespace: the row's fields, then each step's outputs."""

    def __init__(self, steps: list[tuple[str, Predict]]):
        if not steps or len(steps) > MAX_STEPS:
            raise DataError(f"a program needs 1 to {MAX_STEPS} steps (got {len(steps)}).")
        names = [n for n, _ in steps]
        if len(set(names)) != len(names):
            raise DataError(f"program: step names {names} repeat; give each step its own name.")
        self.steps = [p for _, p in steps]
        self.step_names = names

    def named_predictors(self, prefix: str = "") -> list[tuple[str, Predict]]:
        return [(prefix + n, p) for n, p in zip(self.step_names, self.steps, strict=True)]

    def forward(self, **row) -> Prediction:
        return self._steps([row], lambda step, values: [step(**values[0])])[0]

    def batch(self, rows: list[dict]) -> list[Prediction | None]:
        """Each step over all the rows still running (``Predict.batch``); a row whose reply did not parse
        stops there (None)."""
        return self._steps(rows, lambda step, values: step.batch(values))

    def _steps(self, rows: list[dict], run) -> list[Prediction | None]:
        namespaces, outs = [dict(r) for r in rows], [Prediction() for _ in rows]
        alive = list(range(len(rows)))
        for name, step in zip(self.step_names, self.steps, strict=True):
            for i in alive:
                missing = [f for f in step.signature.input_names if f not in namespaces[i]]
                if missing:
                    raise DataError(
                        f"program step {name!r} reads {missing}, which neither the row nor an earlier step gives "
                        f"(the row has {sorted(rows[i])})."
                    )
            values = [{f: namespaces[i][f] for f in step.signature.input_names} for i in alive]
            results = run(step, values) if alive else []
            for i, result in zip(alive, results, strict=True):
                if result is not None:
                    namespaces[i].update(result)
                    outs[i].update(result)
            alive = [i for i, result in zip(alive, results, strict=True) if result is not None]
        done = set(alive)
        return [outs[i] if i in done else None for i in range(len(rows))]

    @property
    def signature(self) -> Signature:
        """The program seen from outside: the first step's inputs, the last step's outputs."""
        return Signature(self.steps[0].signature.inputs, self.steps[-1].signature.outputs)

    def to_dict(self) -> dict:
        return {
            "steps": [
                {
                    "name": name,
                    "module": step.module_name,
                    "signature": step.signature.to_dict(),
                    "max_retries": step.max_retries,
                    "max_tokens": step.max_tokens,
                    "demos": step.demos,
                    **({"layout": step.layout, "prefixes": step.prefixes} if "layout" in step.dump_state() else {}),
                    **({"calibrate": True} if step.calibrate else {}),
                    **({"offsets": dict(step.offsets)} if step.offsets is not None else {}),
                }
                for name, step in zip(self.step_names, self.steps, strict=True)
            ]
        }

    @classmethod
    def from_dict(cls, raw, where: str) -> Pipeline:
        steps = raw.get("steps") if isinstance(raw, dict) else None
        if not isinstance(steps, list) or not steps:
            raise DataError(f"{where}: expected 'steps:', a list of {{signature, module, instruction}} entries.")
        if len(steps) > MAX_STEPS:
            raise DataError(f"{where}: {len(steps)} steps; at most {MAX_STEPS}.")
        return cls([_step(s, i, where) for i, s in enumerate(steps, start=1)])


def _step(raw, i: int, where: str) -> tuple[str, Predict]:
    at = f"{where}, step {i}"
    if not isinstance(raw, dict):
        raise DataError(f"{at}: a step is a mapping with at least 'signature'.")
    unknown = sorted(set(raw) - STEP_KEYS)
    if unknown:
        raise DataError(f"{at}: unknown key(s) {unknown}; a step has {sorted(STEP_KEYS)}.")
    if "signature" not in raw:
        raise DataError(f"{at}: no 'signature' (e.g. signature: 'text -> label').")
    kind = raw.get("module", "predict")
    if kind not in MODULES:
        raise DataError(f"{at}: module {kind!r} is not one of {', '.join(MODULES)}.")
    try:
        step = MODULES[kind](
            Signature.coerce(raw["signature"]),
            raw.get("instruction"),
            **{k: raw[k] for k in ("max_retries", "max_tokens") if k in raw},
        )
        keys = ("demos", "layout", "prefixes", "calibrate", "offsets")
        if any(k in raw for k in keys):
            step.set_state({"instruction": step.instruction, **{k: raw[k] for k in keys if k in raw}})
    except DataError as e:
        raise DataError(f"{at}: {e}") from None
    return str(raw.get("name", f"step{i}")), step


def load_program(spec: str | Path) -> tuple[Pipeline | Ensemble, dict]:
    """A program from a YAML/JSON file, a saved program (file or its folder), or a signature string.

    Returns the program and the saved record's other keys (score, history; empty for a new program).
    """
    text = str(spec)
    path = Path(text)
    if "->" in text and not path.exists():
        return Pipeline([("step1", Predict(Signature.parse(text)))]), {}
    if path.is_dir():
        path = path / PROGRAM_FILE
    if not path.is_file():
        raise DataError(
            f"program {text!r}: not a file, a folder holding {PROGRAM_FILE}, or a signature such as 'text -> label'."
        )
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DataError(f"{path}: larger than {MAX_FILE_BYTES:,} bytes; a program file holds steps and demos only.")
    raw = _read(path)
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        if raw.get("version") != VERSION:
            raise DataError(f"{path}: program format version {raw.get('version')!r}; this prompttune reads {VERSION}.")
        program = program_from_dict(raw.get("program"), str(path))
        return program, {k: v for k, v in raw.items() if k not in ("format", "version", "program")}
    return program_from_dict(raw, str(path)), {}


def program_from_dict(raw, where: str) -> Pipeline | Ensemble:
    """A program's steps, or an ensemble of such programs (``ensemble: [{steps: ...}, ...]``)."""
    if isinstance(raw, dict) and "ensemble" in raw:
        extra = sorted(set(raw) - {"ensemble"})
        if extra:
            raise DataError(f"{where}: an ensemble holds only 'ensemble' (a list of programs); found {extra}.")
        return Ensemble.from_dict(raw, where, Pipeline.from_dict)
    return Pipeline.from_dict(raw, where)


def _read(path: Path):
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}).") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({e}).") from None


def save_program(program: Pipeline | Ensemble, out: Path, **record) -> Path:
    """Write ``out/program.json`` atomically: the steps with instructions and demos, plus ``record``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: is a file; give a folder for the program.")
    path = out / PROGRAM_FILE
    atomic.write_json(path, {"format": FORMAT, "version": VERSION, "program": program.to_dict(), **record})
    return path


def is_program_dir(path: Path) -> bool:
    return (Path(path) / PROGRAM_FILE).is_file()
