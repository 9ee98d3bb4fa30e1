"""PEZ (Wen et al., NeurIPS 2023, "Hard Prompts Made Easy"): a discrete prompt found by projected gradients.

A continuous copy P of the prompt's vectors is kept. Each step the model reads P's projection onto the
nearest vocabulary tokens (by cosine), the loss's gradient with respect to that projection is taken, and
the optimizer (AdamW, as the paper) applies it to P. Every ``eval_every`` steps the current projection is
scored on selection rows (rows not trained on); the best projection (accuracy, then lower loss) is kept.
The result is token ids, so the prompt can be written out as text.
With ``confirm`` a new projection replaces the tokens the model reads only if it also lowers the loss on the
next batch (gcg.py's check; the continuous copy moves on either way). Measured on SST-2 it did not help
(docs/readable.md), so it is off.

The learning rate scales with the embeddings (default ``LR_FACTOR`` x their std: SmolLM2-135M's std is
0.136, its nearest neighbours ~2.6 apart at norm ~3.2), so one Adam step moves P a fraction of the way
between tokens whatever the model's embedding scale.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prompttune.core.data import Dataset
from prompttune.core.errors import PromptTuneError
from prompttune.prompt_task import PromptTask
from prompttune.readable.discrete import (  # noqa: F401 (start_from_tokens: imported from here by callers)
    SearchResult,
    Selection,
    batch_stream,
    confirmed,
    load_tokens,
    start_from_tokens,
)
from prompttune.readable.vocab import Vocabulary
from prompttune.train import Callback, TrainConfig

MAX_STEPS = 10_000
MAX_BATCH = 256
LR_FACTOR = 0.3  # default lr = LR_FACTOR x the embedding matrix's std (SmolLM2-135M: 0.04)


@dataclass
class PezConfig:
    steps: int = 200
    lr: float | None = None
    batch_size: int = 16
    eval_every: int = 25
    seed: int = 0
    confirm: bool = False  # a new projection replaces the one the model reads only if the next batch's loss agrees

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= MAX_STEPS:
            raise PromptTuneError(f"--steps {self.steps}: must be 1-{MAX_STEPS:,}.")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise PromptTuneError(f"--lr {self.lr}: must be a positive finite number (or leave it out).")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise PromptTuneError(f"--batch-size {self.batch_size}: must be 1-{MAX_BATCH}.")
        if not 1 <= self.eval_every <= MAX_STEPS:
            raise PromptTuneError(f"--eval-every {self.eval_every}: must be 1-{MAX_STEPS:,}.")
        if not isinstance(self.confirm, bool):
            raise PromptTuneError(f"--confirm {self.confirm!r}: true or false.")


PezResult = SearchResult  # the name the tests and the compare arm used first


def run_pez(
    task: PromptTask,
    vocab: Vocabulary,
    train: Dataset,
    select: Dataset,
    config: PezConfig,
    callbacks: Sequence[Callback] = (),
) -> SearchResult:
    """Optimize the soft slots of ``task`` (a prompt-tuning task: its table is what the model reads) as tokens.

    The table's current values are the starting point (e.g. an artifact's soft prompt, or label-word tokens).
    """
    method = task.model.method
    objective = task.objective(train, select, TrainConfig())  # every data error before the first step
    (table,) = [p for p in method.parameters() if p.requires_grad]  # the (n, d) table the slots read
    with torch.no_grad():
        continuous = method.table().detach().float().clone().requires_grad_(True)  # P
    lr = config.lr or LR_FACTOR * float(vocab.matrix.std())
    opt = torch.optim.AdamW([continuous], lr=lr, weight_decay=0.0)

    current = vocab.project(continuous)  # the tokens the model reads
    load_tokens(task, vocab, current)
    selection = Selection(task, objective, config.steps, callbacks)
    selection.consider(0, current)
    stream = batch_stream(len(objective.y_train), config.batch_size, config.seed)
    jumps = taken = 0
    for step in range(1, config.steps + 1):
        batch = next(stream)
        tick = time.perf_counter()
        with torch.enable_grad():
            train_loss = objective.batch_loss(batch)
            (grad,) = torch.autograd.grad(train_loss, [table])  # w.r.t. the projection the model read
        continuous.grad = grad.detach().float()
        train_loss = float(train_loss.detach())
        opt.step()
        opt.zero_grad(set_to_none=True)
        proposed = vocab.project(continuous)
        if not torch.equal(proposed, current):
            jumps += 1
            if not config.confirm or confirmed(task, vocab, objective, current, proposed, next(stream)):
                current, taken = proposed, taken + 1
        load_tokens(task, vocab, current)
        rate = len(batch) / max(time.perf_counter() - tick, 1e-9)
        selection.step_event({"step": step, "loss": train_loss, "lr": lr, "examples_per_s": rate})
        if step % config.eval_every == 0 or step == config.steps:
            selection.consider(step, current, train_loss=train_loss, jumps=jumps, jumps_taken=taken)
    return selection.finish(vocab, lr)
