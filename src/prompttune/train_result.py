"""What a training run reports: steps, time, the validation history, the best value and the step(s) whose state the
run ended with; ``metrics()`` is what an artifact's manifest records."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainResult:
    metric: str = "accuracy"  # the name of the validation metric (accuracy, entity F1, QA F1, ...)
    steps: int = 0
    train_seconds: float = 0.0
    train_examples: int = 0
    best_val: float = 0.0  # the best validation value of ``metric`` (higher is better)
    best_step: int = 0
    history: list[dict] = field(default_factory=list)  # {"step", "val", "loss"} per validation
    stopped_early: bool = False
    eval_seconds: float = 0.0  # time spent validating, excluded from train_seconds
    stopped_by: str | None = None  # "patience", "time budget", or None (the planned steps ran)
    # The step the learning rate decays to 0 at: the configured total, brought forward at a validation when the
    # time budget will stop the run sooner (0: not planned yet)
    planned_steps: int = 0
    planned_from: int = 0  # the configured total that plan was made from (a resume with another total replans)
    # The steps whose (moving-averaged) states the run ended with, averaged (TrainConfig.average_best): one step,
    # the best, unless several were kept; ``averaged_val`` is that average's own validation value (None: one state)
    kept_steps: list[int] = field(default_factory=list)
    averaged_val: float | None = None

    @property
    def train_examples_per_s(self) -> float:
        return self.train_examples / self.train_seconds if self.train_seconds else 0.0

    @property
    def initial_val(self) -> float | None:
        """The metric before any training step (None when training resumed without it)."""
        return self.history[0]["val"] if self.history and self.history[0]["step"] == 0 else None

    def metrics(self) -> dict:
        """What an artifact's manifest records about its training."""
        return {
            "metric": self.metric,
            "best_val": self.best_val,
            "initial_val": self.initial_val,
            "best_step": self.best_step,
            "steps": self.steps,
            "train_seconds": self.train_seconds,
            "train_examples_per_s": self.train_examples_per_s,
            "stopped_early": self.stopped_early,
            "stopped_by": self.stopped_by,
            "planned_steps": self.planned_steps,
            "kept_steps": self.kept_steps,
            "averaged_val": self.averaged_val,
            "history": self.history,
        }
