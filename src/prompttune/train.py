"""The training loop: length-bucketed batches, validation every K steps, early stopping, best state
kept, and a checkpoint after each validation so a killed run resumes where it left off."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from prompttune.core import atomic
from prompttune.core.backbone import release_memory
from prompttune.core.errors import PromptTuneError
from prompttune.scorer import Encoded, PromptModel


@dataclass
class TrainConfig:
    epochs: int = 4
    max_steps: int | None = None
    batch_size: int = 16
    lr: float = 0.01
    head_lr: float | None = None  # a read-out head's learning rate (default: lr)
    weight_decay: float = 0.0
    warmup_steps: int = 20
    eval_every: int | None = None  # default: 4 validations an epoch
    patience: int = 4  # validations without improvement before stopping
    ema: float = 0.9  # validate and keep an exponential moving average of the prompt (0: off)
    seed: int = 0
    backbone_dropout: bool = False  # head tasks: the frozen backbone's own dropout stays on in training steps

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    steps: int = 0
    train_seconds: float = 0.0
    train_examples: int = 0
    best_val_accuracy: float = 0.0
    best_step: int = 0
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    eval_seconds: float = 0.0  # time spent validating, excluded from train_seconds
    # best_val_accuracy / "val_accuracy" hold the objective's validation metric (accuracy, entity F1, QA F1)

    @property
    def train_examples_per_s(self) -> float:
        return self.train_examples / self.train_seconds if self.train_seconds else 0.0


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """A seeded order for one epoch: shuffle, sort chunks of 32 batches by length, shuffle the batches.

    Rows of similar length share a batch (little padding) while each epoch's order stays random.
    """
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    chunk = batch_size * 32
    batches = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in perm]


class Objective(Protocol):
    """What the Trainer needs of a task: examples' lengths (for batching), a batch's loss, a validation metric."""

    lengths: list[int]

    def batch_loss(self, batch: list[int]) -> torch.Tensor: ...

    def validate(self) -> float: ...


class VerbalizerObjective:
    """A PromptModel's verbalizer read-out: cross-entropy over label scores, validated by accuracy."""

    def __init__(self, model: PromptModel, train: Encoded, y_train: torch.Tensor, val: Encoded, y_val: torch.Tensor):
        self.model, self.train, self.y_train, self.val, self.y_val = model, train, y_train, val, y_val
        self.lengths = [len(x) for x in train.ids]

    def batch_loss(self, batch: list[int]) -> torch.Tensor:
        scores = self.model.label_scores([self.train.ids[i] for i in batch], self.model.prefix_kv())
        return F.cross_entropy(scores, self.y_train[batch])

    def validate(self) -> float:
        pred = self.model.score(self.val, batch_size=64, calibrate=False).argmax(-1)
        return float((pred == self.y_val).float().mean())


class Trainer:
    """Trains ``model.trainable`` (a PromptModel's method; a HeadModel's method and head) on an Objective.

    The module trained provides ``trainable_state`` / ``load_trainable_state`` and, optionally,
    ``parameter_groups`` ({"prompt": [...], "head": [...]}: the head trains at ``head_lr``) and ``lr_scales``
    ({group: factor}: that group trains at factor x ``lr``).
    """

    def __init__(
        self,
        model: PromptModel,
        config: TrainConfig,
        checkpoint_dir: Path | None = None,
        on_progress: Callable[[dict], None] | None = None,
    ):
        self.model = model
        self.parts = model.trainable
        self.config = config
        self.checkpoint_dir = checkpoint_dir
        self.ema: dict | None = None
        self.on_progress = on_progress
        groups = getattr(self.parts, "parameter_groups", None)
        named = groups() if groups else {"prompt": [p for p in self.parts.parameters() if p.requires_grad]}
        scales = getattr(self.parts, "lr_scales", {})  # e.g. P-tuning's encoder: a fraction of --lr

        def lr_of(name: str) -> float:
            return config.head_lr or config.lr if name == "head" else config.lr * scales.get(name, 1.0)

        param_groups = [{"params": ps, "lr": lr_of(name), "base_lr": lr_of(name)} for name, ps in named.items() if ps]
        self.params = [p for g in param_groups for p in g["params"]]
        self.optimizer = (
            torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay) if self.params else None
        )

    def fit(
        self, train: Encoded, y_train: torch.Tensor, val: Encoded, y_val: torch.Tensor, resume: bool = False
    ) -> TrainResult:
        """Train a PromptModel's verbalizer read-out (see ``fit_objective`` for any other task)."""
        return self.fit_objective(VerbalizerObjective(self.model, train, y_train, val, y_val), resume)

    def fit_objective(self, objective: Objective, resume: bool = False) -> TrainResult:
        cfg = self.config
        self.objective = objective
        lengths = objective.lengths
        per_epoch = math.ceil(len(lengths) / cfg.batch_size)
        total = cfg.max_steps or per_epoch * cfg.epochs  # --max-steps overrides --epochs
        eval_every = cfg.eval_every or max(10, per_epoch // 4)
        result = TrainResult()
        best_state = self.parts.trainable_state()
        start_step = 0
        if resume:
            start_step, best_state, result = self._load_checkpoint(result)
        if not self.params:
            raise PromptTuneError("this method has no trainable parameters; nothing to train.")
        if start_step == 0:
            self.ema = self.parts.trainable_state() if cfg.ema else None
            result.best_val_accuracy = self._validate()
            result.history.append({"step": 0, "val_accuracy": result.best_val_accuracy})
        bad_evals = 0  # validations since the best one
        for h in result.history[::-1]:
            if h["val_accuracy"] >= result.best_val_accuracy:
                break
            bad_evals += 1
        step = start_step
        t0 = time.perf_counter() - result.train_seconds - result.eval_seconds
        self.parts.train()
        while step < total:
            epoch, offset = divmod(step, per_epoch)
            batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch)
            for batch in batches[offset:]:
                loss = self._step(step, total, batch)
                self._update_ema()
                step += 1
                if step % 10 == 0:
                    release_memory()
                result.train_examples += len(batch)
                result.steps = step
                elapsed = time.perf_counter() - t0 - result.eval_seconds
                if self.on_progress:
                    self.on_progress(
                        {"step": step, "total": total, "loss": loss, "examples_per_s": result.train_examples / elapsed}
                    )
                if step % eval_every == 0 or step == total:
                    t_eval = time.perf_counter()
                    acc = self._evaluate_averaged()
                    result.eval_seconds += time.perf_counter() - t_eval
                    result.train_seconds = time.perf_counter() - t0 - result.eval_seconds
                    result.history.append({"step": step, "val_accuracy": acc, "loss": loss})
                    if acc > result.best_val_accuracy:
                        result.best_val_accuracy, result.best_step = acc, step
                        best_state = (
                            {k: v.clone() for k, v in self.ema.items()} if self.ema else self.parts.trainable_state()
                        )
                        bad_evals = 0
                    else:
                        bad_evals += 1
                    self._save_checkpoint(step, best_state, result)
                    if self.on_progress:
                        self.on_progress(
                            {
                                "step": step,
                                "total": total,
                                "val_accuracy": acc,
                                "best_val_accuracy": result.best_val_accuracy,
                            }
                        )
                    if bad_evals >= cfg.patience:
                        result.stopped_early = True
                        break
                if step >= total:
                    break
            if result.stopped_early:
                break
        result.train_seconds = time.perf_counter() - t0 - result.eval_seconds
        self.parts.load_trainable_state(best_state)
        self.parts.eval()
        self.model.clear_cache()
        return result

    def _lr(self, step: int, total: int) -> float:
        """The schedule's factor times lr (each parameter group scales it by its own base rate)."""
        warm = self.config.warmup_steps
        if step < warm:
            return self.config.lr * (step + 1) / warm
        return self.config.lr * max(0.0, (total - step) / max(1, total - warm))

    def _step(self, step: int, total: int, batch: list[int]) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(step, total) * group.get("base_lr", self.config.lr) / self.config.lr
        loss = self.objective.batch_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.model.clear_cache()
        return loss.item()

    def _update_ema(self) -> None:
        if not self.ema:
            return
        d = self.config.ema
        with torch.no_grad():
            for k, v in self.parts.state_dict().items():
                if k in self.ema and v.is_floating_point():
                    self.ema[k].mul_(d).add_(v, alpha=1 - d)

    def _evaluate_averaged(self) -> float:
        """The validation metric of the averaged parameters (or the current ones without averaging)."""
        if not self.ema:
            return self._validate()
        current = self.parts.trainable_state()
        self.parts.load_trainable_state(self.ema)
        try:
            return self._validate()
        finally:
            self.parts.load_trainable_state(current)
            self.model.clear_cache()

    def _validate(self) -> float:
        was_training = self.parts.training
        self.parts.eval()
        self.model.clear_cache()
        try:
            return self.objective.validate()
        finally:
            self.model.clear_cache()
            self.parts.train(was_training)

    def evaluate(self, val: Encoded, y_val: torch.Tensor) -> float:
        """Validation accuracy of a PromptModel's verbalizer read-out."""
        self.objective = VerbalizerObjective(self.model, val, y_val, val, y_val)
        return self._validate()

    # --- checkpoints --------------------------------------------------------------------------
    def _save_checkpoint(self, step: int, best_state: dict, result: TrainResult) -> None:
        if self.checkpoint_dir is None:
            return
        opt = self.optimizer.state_dict()
        tensors = {f"param.{k}": v.cpu().contiguous() for k, v in self.parts.trainable_state().items()}
        tensors |= {f"best.{k}": v.cpu().contiguous() for k, v in best_state.items()}
        tensors |= {f"ema.{k}": v.cpu().contiguous() for k, v in (self.ema or {}).items()}
        meta_state = {}
        for pid, st in opt["state"].items():
            for name, value in st.items():
                if torch.is_tensor(value):
                    tensors[f"opt.{pid}.{name}"] = value.cpu().contiguous().reshape(value.shape)
                else:
                    meta_state[f"{pid}.{name}"] = value
        info = {
            "step": step,
            "config": self.config.to_dict(),
            "param_groups": opt["param_groups"],
            "opt_scalars": meta_state,
            "result": {**asdict(result)},
        }

        def fill(tmp: Path) -> None:
            save_file(tensors, tmp / "state.safetensors")
            atomic.write_json(tmp / "state.json", info)

        atomic.write_dir(self.checkpoint_dir, fill)

    def _load_checkpoint(self, result: TrainResult):
        d = self.checkpoint_dir
        if d is None or not (d / "state.json").exists():
            raise PromptTuneError(
                f"--resume: no checkpoint in {d}; start without --resume (a checkpoint is written at every validation)."
            )
        info = json.loads((d / "state.json").read_text())
        # a setting added after the checkpoint was written reads as its default
        saved = {
            k: v
            for k, v in (TrainConfig().to_dict() | info["config"]).items()
            if k not in ("max_steps", "epochs", "patience")
        }
        now = {k: v for k, v in self.config.to_dict().items() if k not in ("max_steps", "epochs", "patience")}
        if saved != now:
            diff = {k: (saved.get(k), now.get(k)) for k in now if saved.get(k) != now.get(k)}
            raise PromptTuneError(f"--resume: the checkpoint in {d} was made with other settings {diff}.")
        tensors = load_file(d / "state.safetensors")
        device = self.params[0].device if self.params else torch.device("cpu")  # the moving average lives there
        tensors = {k: v if k.startswith("opt.") else v.to(device) for k, v in tensors.items()}
        self.parts.load_trainable_state({k[6:]: v for k, v in tensors.items() if k.startswith("param.")})
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        self.ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")} or None
        state: dict = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        for k, v in info["opt_scalars"].items():
            pid, name = k.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        self.optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
        r = info["result"]
        result = TrainResult(
            **{
                k: r[k]
                for k in (
                    "steps",
                    "train_seconds",
                    "train_examples",
                    "eval_seconds",
                    "best_val_accuracy",
                    "best_step",
                    "history",
                )
            }
        )
        return info["step"], best, result
