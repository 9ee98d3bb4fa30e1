"""The training loop: length-bucketed batches, validation every K steps, early stopping, best state
kept, and a checkpoint after each validation so a killed run resumes where it left off."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Protocol

import torch

from prompttune.batches import epoch_batches as epoch_batches  # re-exported
from prompttune.batches import loss_weight_of, micro_batches, objective_batches
from prompttune.checkpoint import load_checkpoint, save_checkpoint
from prompttune.core.errors import PromptTuneError
from prompttune.core.heap import HeapTrim, release_memory
from prompttune.distributed.context import init_from_env
from prompttune.distributed.step import backward_shard
from prompttune.kept_states import KeptStates, standard_error
from prompttune.prefix import step_prefix_once
from prompttune.train_result import TrainResult as TrainResult  # re-exported


@dataclass
class TrainConfig:
    epochs: int = 5  # the same defaults as `prompttune train` (tests/test_train.py checks)
    max_steps: int | None = None
    batch_size: int = 16
    lr: float | None = None  # None: the method's own default (``SoftPromptMethod.default_lr``)
    head_lr: float | None = None  # a read-out head's learning rate (default: lr)
    weight_decay: float = 0.0
    warmup_steps: int = 20
    eval_every: int | None = None  # default: 4 validations an epoch
    # Validations without a strict improvement before stopping (a tie does not reset the count). 10, not 6: on
    # SST-2 held-out accuracy kept rising after validation accuracy plateaued (benchmarks/sst2_trajectory.py)
    patience: int = 10
    ema: float = 0.9  # validate and keep an exponential moving average of the prompt (0: off)
    # The run ends with the mean of its k best validated states, ties broken by validation loss (kept_states.py;
    # 1: the best state alone): one validation picks a state by a few rows' noise, the mean of three does not
    average_best: int = 3
    seed: int = 0
    backbone_dropout: bool = False  # head tasks: the frozen backbone's own dropout stays on in training steps
    # Seconds of training (steps + validation) after which the run validates once more and stops, keeping the
    # best state: the default recipe ends in bounded time on long rows and busy machines (None: no limit).
    time_budget_s: float | None = 780.0
    # Labels a training row scores where the label words' later tokens are more than one chunk of 256 (many labels
    # of several words; label_words/sampled_labels.py): its own and a seeded sample of others (0: every label)
    sampled_labels: int = 64

    def __post_init__(self) -> None:
        """Every setting checked before anything loads; errors name the CLI flag."""
        for flag, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size)):
            if value < 1:
                raise PromptTuneError(f"{flag} {value}: must be at least 1.")
        if self.max_steps is not None and self.max_steps < 1:
            raise PromptTuneError(f"--max-steps {self.max_steps}: must be at least 1 (or leave it out).")
        for flag, value in (("--lr", self.lr), ("--head-lr", self.head_lr)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise PromptTuneError(f"{flag} {value}: must be a positive finite number.")
        if not (math.isfinite(self.ema) and 0 <= self.ema < 1):
            raise PromptTuneError(f"--ema {self.ema}: must be in [0, 1) (0 turns the moving average off).")
        if self.eval_every is not None and self.eval_every < 1:
            raise PromptTuneError(f"--eval-every {self.eval_every}: must be at least 1.")
        if self.average_best < 1:
            raise PromptTuneError(f"--average-best {self.average_best}: must be at least 1 (1: keep the best state).")
        if self.patience < 1:
            raise PromptTuneError(f"--patience {self.patience}: must be at least 1.")
        if self.time_budget_s is not None and not (math.isfinite(self.time_budget_s) and self.time_budget_s > 0):
            raise PromptTuneError(f"time_budget_s {self.time_budget_s}: must be a positive number of seconds or None.")
        if self.sampled_labels == 1 or self.sampled_labels < 0:
            raise PromptTuneError(
                f"--sampled-labels {self.sampled_labels}: must be at least 2 (a row's own label and another), or 0 "
                "to score every label at every step."
            )
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise PromptTuneError("warmup_steps / weight_decay: must be 0 or more.")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_lr(self, default_lr: float) -> TrainConfig:
        """This config with ``lr`` set (the given default when it is None)."""
        return self if self.lr is not None else replace(self, lr=default_lr)


class Callback:
    """Hooks the Trainer calls: subclass and override (a progress bar, a logger), or pass functions.

    on_step: {"step", "total", "loss", "lr", "examples_per_s"} after every optimizer step ("total" is the step
    the learning rate decays to 0 at: under a time budget it can come forward at a validation);
    on_validation: {"step", "total", "metric", "val", "best_val"} after every validation.
    """

    def __init__(
        self, on_step: Callable[[dict], None] | None = None, on_validation: Callable[[dict], None] | None = None
    ):
        self._on_step, self._on_validation = on_step, on_validation

    def on_step(self, event: dict) -> None:
        if self._on_step:
            self._on_step(event)

    def on_validation(self, event: dict) -> None:
        if self._on_validation:
            self._on_validation(event)


class Trainable(Protocol):
    """What the Trainer trains: a module with declared parameter groups and a state to save and restore."""

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]: ...

    @property
    def lr_scales(self) -> dict[str, float]: ...

    def trainable_state(self) -> dict[str, torch.Tensor]: ...

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None: ...


class Objective(Protocol):
    """What the Trainer needs of a task: the module it trains, examples' lengths (for batching), a batch's loss,
    and a validation metric (higher is better) with its name."""

    trainable: Trainable
    metric: str
    lengths: list[int]

    def batch_loss(self, batch: list[int]) -> torch.Tensor: ...

    # Optional ``loss_weight(batch)``: what the loss is a mean over (default rows; e.g. tokens), see loss_weight_of
    # Optional ``val_loss``: set by ``validate`` to the validation loss, which breaks ties of the metric when states
    # are ranked (kept_states.py); without it a tie goes to the later state
    # Optional ``val_rows``: how many rows (or inputs) the validation metric is a mean over; it sets which kept
    # states are close enough to the best to be averaged (one standard error); without it every kept state is averaged
    def validate(self) -> float: ...

    def clear_cache(self) -> None:
        """Forget anything computed from the current parameters (e.g. a cached prefix)."""


class Trainer:
    """Trains an Objective's ``trainable`` module: AdamW with warmup and linear decay, validation every K steps,
    early stopping, the best (moving-averaged) state kept, a checkpoint at every validation.

    Each of the module's ``parameter_groups()`` trains at ``config.lr`` x its ``lr_scales`` factor; a group
    named "head" trains at ``config.head_lr`` when it is set.
    """

    def __init__(
        self,
        objective: Objective,
        config: TrainConfig,
        checkpoint_dir: Path | None = None,
        callbacks: Sequence[Callback] = (),
        data_fingerprint: str | None = None,
    ):
        if config.lr is None:
            raise PromptTuneError("TrainConfig.lr: set it, or train through Task.fit (the method's default).")
        self.objective = objective
        self.data_fingerprint = data_fingerprint  # of the training + validation rows: a resume must see the same
        self.parts = objective.trainable
        self.config = config
        self.checkpoint_dir = checkpoint_dir
        self.callbacks = list(callbacks)
        self.ema: dict | None = None
        scales = self.parts.lr_scales  # e.g. P-tuning's encoder: a fraction of --lr

        def lr_of(name: str) -> float:
            return config.head_lr or config.lr if name == "head" else config.lr * scales.get(name, 1.0)

        named = self.parts.parameter_groups()
        param_groups = [{"params": ps, "lr": lr_of(name), "base_lr": lr_of(name)} for name, ps in named.items() if ps]
        self.params = [p for g in param_groups for p in g["params"]]
        self.optimizer = (
            torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay) if self.params else None
        )
        # Under a launcher (torchrun, accelerate launch, --nproc): each rank steps on its part of every global
        # batch and the gradients are summed (distributed/); rank 0 alone reports and writes checkpoints.
        self.dist = init_from_env(str(self.params[0].device) if self.params else None)
        if self.dist is not None and not self.dist.is_main:
            self.callbacks = []

    def fit(self, resume: bool = False) -> TrainResult:
        cfg, objective = self.config, self.objective
        lengths = objective.lengths
        per_epoch = math.ceil(len(lengths) / cfg.batch_size)
        total = cfg.max_steps or per_epoch * cfg.epochs  # --max-steps overrides --epochs
        eval_every = cfg.eval_every or max(10, per_epoch // 4)
        result = TrainResult(metric=objective.metric)
        kept = KeptStates(cfg.average_best)
        start_step = 0
        if resume:
            start_step, result = self._load_checkpoint(result, kept)
        if not self.params:
            raise PromptTuneError("this method has no trainable parameters; nothing to train.")
        if self.dist is not None:  # every rank starts from rank 0's parameters
            self.dist.broadcast_(self.params)
        if start_step == 0:
            self.ema = self.parts.trainable_state() if cfg.ema else None
            t_eval = time.perf_counter()
            result.best_val = self.validate()
            result.eval_seconds += time.perf_counter() - t_eval  # counts toward the time budget
            val_loss = self._val_loss()
            first = {"step": 0, "val": result.best_val}
            result.history.append(first | ({"val_loss": val_loss} if val_loss is not None else {}))
            kept.offer(result.best_val, 0, self.parts.trainable_state(), val_loss)
        # validations since the best value was first reached (a tie keeps the later state, the count runs on)
        reached = next((i for i, h in enumerate(result.history) if h["val"] >= result.best_val), 0)
        bad_evals = len(result.history) - 1 - reached
        step = start_step
        t0 = time.perf_counter() - result.train_seconds - result.eval_seconds
        if result.planned_from != total:  # a new run, or resumed with another --max-steps / --epochs
            result.planned_steps, result.planned_from = total, total
        self.parts.train()
        trim = HeapTrim()
        while step < result.planned_steps:
            epoch, offset = divmod(step, per_epoch)
            batches = objective_batches(objective, cfg.batch_size, cfg.seed, epoch)
            for batch in batches[offset:]:
                loss = self._step(step, result.planned_steps, batch)
                self._update_ema()
                step += 1
                trim(step)  # glibc keeps freed heap: handed back every 10 steps, or once it grew 64 MB (long rows)
                result.train_examples += len(batch)
                result.steps = step
                elapsed = time.perf_counter() - t0 - result.eval_seconds
                event = {
                    "step": step,
                    "total": result.planned_steps,
                    "loss": loss,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "examples_per_s": result.train_examples / max(elapsed, 1e-9),
                }
                for cb in self.callbacks:
                    cb.on_step(event)
                over_time = cfg.time_budget_s is not None and time.perf_counter() - t0 >= cfg.time_budget_s
                if self.dist is not None and cfg.time_budget_s is not None:  # every rank stops at the same step
                    over_time = self.dist.agree(over_time)
                if step % eval_every == 0 or step >= result.planned_steps or over_time:
                    t_eval = time.perf_counter()
                    val = self._evaluate_averaged()
                    release_memory()  # validation's batches differ in shape from the steps'
                    result.eval_seconds += time.perf_counter() - t_eval
                    result.train_seconds = time.perf_counter() - t0 - result.eval_seconds
                    val_loss = self._val_loss()
                    entry = {"step": step, "val": val, "loss": loss}
                    result.history.append(entry | ({"val_loss": val_loss} if val_loss is not None else {}))
                    bad_evals = 0 if val > result.best_val else bad_evals + 1
                    kept.offer(val, step, self.ema or self.parts.trainable_state(), val_loss)
                    result.best_val, result.best_step = kept.best  # a tie: the lower loss, else the later state
                    self._replan(result, step, time.perf_counter() - t0)
                    self._save_checkpoint(step, kept, result)
                    event = {"step": step, "total": result.planned_steps, "metric": result.metric, "val": val}
                    for cb in self.callbacks:
                        cb.on_validation(event | {"best_val": result.best_val})
                    cut = step < total and (over_time or step >= result.planned_steps)  # the budget ended it
                    if bad_evals >= cfg.patience or cut:
                        result.stopped_early = True
                        result.stopped_by = "patience" if bad_evals >= cfg.patience else "time budget"
                        break
                if step >= result.planned_steps:
                    break
            if result.stopped_early:
                break
        result.train_seconds = time.perf_counter() - t0 - result.eval_seconds
        # only states within one standard error of the best are averaged (kept_states.py)
        kept.within = standard_error(kept.best[0], getattr(objective, "val_rows", None))
        self.parts.load_trainable_state(kept.averaged())
        result.kept_steps = kept.steps
        if len(result.kept_steps) > 1:  # the average was never validated as such: once
            t_eval = time.perf_counter()
            result.averaged_val = self.validate()
            result.eval_seconds += time.perf_counter() - t_eval
            if result.averaged_val < min(e[0] for e in kept.averaged_entries):  # worse than each of its states
                self.parts.load_trainable_state(kept.best_state())
                result.kept_steps, result.averaged_val = [result.best_step], None
        self.parts.eval()
        objective.clear_cache()
        return result

    def _replan(self, result: TrainResult, step: int, elapsed: float) -> None:
        """Under a time budget, bring the learning rate's end forward to the step the budget will stop at (at the
        pace so far, validation included), so a run the budget cuts short still anneals instead of stopping at
        full rate. Only after warm-up, and only ever sooner; a run that fits its budget keeps its schedule (and
        stays deterministic under its seed)."""
        budget = self.config.time_budget_s
        if budget is None or step <= self.config.warmup_steps:
            return
        if self.dist is not None:  # every rank plans by rank 0's clock
            elapsed = self.dist.from_main(elapsed)
        if elapsed <= 0:
            return
        reachable = int(step + max(0.0, budget - elapsed) * step / elapsed)
        result.planned_steps = min(result.planned_steps, max(step + 1, reachable))

    def _lr(self, step: int, total: int) -> float:
        """The schedule's factor times lr (each parameter group scales it by its own base rate)."""
        warm = self.config.warmup_steps
        if step < warm:
            return self.config.lr * (step + 1) / warm
        return self.config.lr * max(0.0, (total - step) / max(1, total - warm))

    def _step(self, step: int, total: int, batch: list[int]) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(step, total) * group.get("base_lr", self.config.lr) / self.config.lr
        self.optimizer.zero_grad(set_to_none=True)
        begin = getattr(self.objective, "begin_step", None)
        if begin is not None:
            begin(step)
        if self.dist is not None:  # this rank's part, then the gradients summed over the ranks
            weigh = partial(loss_weight_of, self.objective)
            loss = backward_shard(self.dist, self._backward_micro_batches, self.params, batch, step, weigh)
        else:
            loss = self._backward_micro_batches(batch)
        if not torch.isfinite(loss):
            raise PromptTuneError(
                f"training diverged at step {step + 1} (loss {loss.item()}); lower --lr (now {self.config.lr})."
            )
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.objective.clear_cache()
        return loss.item()

    def _backward_micro_batches(self, batch: list[int]) -> torch.Tensor:
        """The batch's loss, its gradient accumulated over micro-batches of at most the objective's
        ``micro_batch_tokens`` padded tokens (an objective whose loss is a mean over rows may declare it): a step
        on long rows holds one part's activations at a time, with the gradient of the whole batch's mean."""
        budget = getattr(self.objective, "micro_batch_tokens", None)
        parts = micro_batches(batch, self.objective.lengths, budget) if budget else [batch]
        total, whole = torch.zeros(()), loss_weight_of(self.objective, batch)
        with step_prefix_once(self.objective, batch) if len(parts) > 1 else nullcontext():
            for part in parts:
                loss = self.objective.batch_loss(part)
                if not torch.isfinite(loss):
                    return loss.detach()
                share = loss_weight_of(self.objective, part) / whole if len(parts) > 1 else 1.0
                (loss * share).backward()
                total = total + loss.detach().cpu().float() * share
        return total

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
            return self.validate()
        current = self.parts.trainable_state()
        self.parts.load_trainable_state(self.ema)
        try:
            return self.validate()
        finally:
            self.parts.load_trainable_state(current)
            self.objective.clear_cache()

    def _val_loss(self) -> float | None:
        """The last validation's loss, where the objective reports one (Objective.val_loss)."""
        loss = getattr(self.objective, "val_loss", None)
        return float(loss) if loss is not None else None

    def validate(self) -> float:
        """The objective's validation metric for the current parameters, in eval mode."""
        was_training = self.parts.training
        self.parts.eval()
        self.objective.clear_cache()
        shard = getattr(self.objective, "validate_shard", None)  # validation split over the ranks, then reduced
        try:
            if self.dist is not None and shard is not None:
                return shard(self.dist.rank, self.dist.world, self.dist.all_reduce_sum)
            return self.objective.validate()
        finally:
            self.objective.clear_cache()
            self.parts.train(was_training)

    # --- checkpoints (checkpoint.py) ---------------------------------------------------------------
    def _save_checkpoint(self, step: int, kept: KeptStates, result: TrainResult) -> None:
        if self.checkpoint_dir is not None and (self.dist is None or self.dist.is_main):
            save_checkpoint(self, step, kept, result)

    def _load_checkpoint(self, result: TrainResult, kept: KeptStates):
        return load_checkpoint(self, result, kept)
