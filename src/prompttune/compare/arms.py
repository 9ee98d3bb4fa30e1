"""What `prompttune compare` can run: an *arm* is a way of adapting the model, with its settings.

Arms come from three places, none of them a list of method names in this file:
- hard prompts (``HARD``): the registry's zero-shot method alone, with few-shot demos, or calibrated;
- every method in the soft-prompt registry (``prompttune.methods.METHODS``), picked up by name, so a
  method added there is comparable with no code here;
- the weight-training baselines registered in ``baselines.BASELINES`` (LoRA, full fine-tuning);
- the transfer arms of ``transfer_arms.TRANSFERS`` (prompt tuning started from a pack, ``-o NAME.pack=PACK``;
  not in ``all``: each needs its pack);
- the searched arms registered in ``searched.SEARCHED`` (optimized, pez, gcg): readable prompts found on the rows
  (not in ``all``: each runs a search per cell, with settings of its own to choose).
- ``probe``: a logistic regression on a decoder layer's features of the rendered rows (``prompttune.probe``;
  nothing back-propagates through the model; the train/eval default for pair rows).

Settings are one flat mapping per arm (``--method-option lora.r=16``): the keys in ``HARNESS_KEYS``
steer training and read-out and apply to every arm; the rest go to the method's own config, which
validates them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from prompttune.compare import transfer_arms
from prompttune.compare.baselines import BASELINES
from prompttune.compare.searched import KIND as SEARCHED_KIND
from prompttune.compare.searched import SEARCHED
from prompttune.core.errors import PromptTuneError
from prompttune.methods import METHODS
from prompttune.methods.options import config_fields, convert, split_option

# Steer the harness, not the method: every arm accepts them.
HARNESS_KEYS = frozenset({"lr", "max_steps", "batch_size", "demos", "calibrate", "ema", "patience", "eval_every"})
SOFT_DEFAULTS = {"lr": 0.01, "ema": 0.9}

# Hard prompts: the registry's zero-shot method (soft slots empty), with demos or calibration.
# uses_seed / uses_rows False: one run stands for every seed and training-set size.
HARD = {
    "zero-shot": ({}, False),
    "few-shot": ({"demos": 4}, True),
    "calibrated": ({"calibrate": True}, False),
}
HARD_METHOD = "zero-shot"
PROBE = "probe"  # kind and name of the probe arm (probe/): its L2 strength is chosen on validation, no lr


@dataclass(frozen=True)
class Arm:
    name: str  # as shown in the report
    kind: str  # "hard prompt" | "soft prompt" | "baseline"
    method: str  # a registry method, or a baseline's name
    options: dict = field(default_factory=dict)
    uses_data: bool = True  # False: seed and training rows do not change the result
    start_from: dict = field(default_factory=dict)  # a pack the prompt starts from (transfer_arms); {}: its init

    def harness(self, key: str, default=None):
        return self.options.get(key, default)

    @property
    def method_config(self) -> dict:
        return {k: v for k, v in self.options.items() if k not in HARNESS_KEYS}

    def train_config(self, spec: dict, seed: int):
        """The TrainConfig of this arm's cell: the run's step budget and batch, the arm's harness options, and no
        wall-clock budget (every arm gets the same steps, whatever the machine's load)."""
        from prompttune.train import TrainConfig

        max_steps = int(self.harness("max_steps", spec["max_steps"]))
        return TrainConfig(
            max_steps=max_steps,
            batch_size=int(self.harness("batch_size", spec["batch_size"])),
            lr=float(lr) if (lr := self.harness("lr")) is not None else None,
            eval_every=int(self.harness("eval_every", 0) or max(1, max_steps // 4)),
            patience=int(self.harness("patience", 4)),
            warmup_steps=min(20, max(1, max_steps // 10)),
            ema=float(self.harness("ema", 0.0) or 0.0),
            seed=seed,
            time_budget_s=None,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["start_from"]:
            del d["start_from"]  # arms without one keep the cell keys they had
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Arm:
        return cls(**d)


def available() -> list[str]:
    """Every arm name, in report order: hard prompts, soft methods, the probe, baselines."""
    soft = [m for m in sorted(METHODS) if m not in HARD and m != HARD_METHOD]
    return list(HARD) + soft + [PROBE] + list(BASELINES)


def resolve(names: list[str], options: dict[str, dict], model: str | None = None) -> list[Arm]:
    """Arms for the --methods names, each with its defaults overridden by its --method-option settings.

    ``model``: the run's --model, which a transfer arm's pack must have been trained on."""
    known = available() + list(transfer_arms.TRANSFERS) + list(SEARCHED)
    arms = []
    for name in names:
        user = options.get(name, {})
        if name in HARD:
            defaults, uses_data = HARD[name]
            uses_data = uses_data or bool(user.get("demos"))
            arms.append(Arm(name, "hard prompt", HARD_METHOD, {**defaults, **user}, uses_data))
        elif name in METHODS:
            lr = METHODS[name].default_lr  # each method says what suits it
            arms.append(Arm(name, "soft prompt", name, {**SOFT_DEFAULTS, "lr": lr, **user}))
        elif name == PROBE:
            if user:
                raise PromptTuneError(f"--method-option probe.{sorted(user)[0]}: the probe has no settings to give.")
            arms.append(Arm(name, PROBE, PROBE, {}))
        elif name in BASELINES:
            arms.append(Arm(name, "baseline", name, {**BASELINES[name].defaults, **user}))
        elif name in SEARCHED:
            SEARCHED[name].check(name, user)  # a bad setting is an error now, before any cell runs
            arms.append(Arm(name, SEARCHED_KIND, name, {**SEARCHED[name].defaults, **user}))
        elif transfer_arms.is_transfer(name):
            rest, start = transfer_arms.split_start(name, user, model)
            lr = METHODS["prompt-tuning"].default_lr  # exactly the prompt-tuning arm, but for the start
            arms.append(Arm(name, "transfer", "prompt-tuning", {**SOFT_DEFAULTS, "lr": lr, **rest}, start_from=start))
        else:
            raise PromptTuneError(f"--methods {name}: unknown; choose from {', '.join(known)} (or 'all').")
    stray = set(options) - set(names)
    if stray:
        raise PromptTuneError(
            f"--method-option {sorted(stray)[0]}.…: that method is not in --methods ({', '.join(names)})."
        )
    return arms


def parse_methods(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names == ["all"]:
        return available()
    if not names:
        raise PromptTuneError("--methods: give at least one method, e.g. zero-shot,prompt-tuning,lora.")
    if len(set(names)) != len(names):
        raise PromptTuneError(f"--methods {spec}: a method is listed twice.")
    return names


HARNESS_TYPES = {
    "lr": float,
    "max_steps": int,
    "batch_size": int,
    "demos": int,
    "calibrate": bool,
    "ema": float,
    "patience": int,
    "eval_every": int,
}
assert set(HARNESS_TYPES) == HARNESS_KEYS


def parse_options(items: list[str]) -> dict[str, dict]:
    """``METHOD.KEY=VALUE`` items -> {method: {key: value}}, typed like `train`'s ``-o``: harness keys and a soft
    method's own settings by their declared types; a baseline's settings (lora.r ...) read as JSON when they parse."""
    out: dict[str, dict] = {}
    expected = "METHOD.KEY=VALUE, e.g. lora.r=16 or few-shot.demos=8."
    for item in items:
        head, raw = split_option(item, expected)
        method, dot, key = head.partition(".")
        method, key = method.strip(), key.strip()
        if not dot or not method or not key:
            raise PromptTuneError(f"--method-option {item!r}: write {expected}")
        if key in HARNESS_TYPES:
            value = convert(f"{method}.{key}", raw, HARNESS_TYPES[key])
        elif method in METHODS and key in (fields := config_fields(method)):
            value = convert(f"{method}.{key}", raw, fields[key])
        elif method in SEARCHED and key in SEARCHED[method].options:
            value = convert(f"{method}.{key}", raw, SEARCHED[method].options[key])
        else:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
        out.setdefault(method, {})[key] = value
    return out
