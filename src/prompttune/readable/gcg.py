"""Greedy coordinate gradient (GCG; Zou et al. 2023, after AutoPrompt, Shin et al. 2020): a discrete prompt found by
trying the token swaps the gradient ranks best.

Each step, on a batch of training rows: the loss's gradient with respect to the prompt's token embeddings ranks,
for every position, the vocabulary's tokens by the first-order change they would make to the loss ((e_v - e_now)
. grad); ``candidates`` single-token swaps are drawn from the ``top_k`` tokens of random positions, each swap's
loss is computed on the same batch (a forward each), and the best swap is taken if it lowers the batch's loss and
also the loss of the next batch (``confirmed``: chosen as the best of many on one batch, a swap nearly always wins
there; on SST-2 without the check every step took a swap and the selection accuracy swung 0.52-0.80).
Where PEZ moves a continuous copy and reads its nearest tokens (a jump the gradient does not see), every change
here is a swap that was tried and measured. Every ``eval_every`` steps the tokens are scored on selection rows; the
best (accuracy, then lower loss) is kept, the start included.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prompttune.core.data import Dataset
from prompttune.core.errors import PromptTuneError
from prompttune.prompt_task import PromptTask
from prompttune.readable.discrete import SearchResult, Selection, batch_stream, confirmed, load_tokens
from prompttune.readable.vocab import Vocabulary
from prompttune.train import Callback, TrainConfig

MAX_STEPS = 10_000
MAX_BATCH = 256
MAX_TOP_K = 4_096
MAX_CANDIDATES = 512


@dataclass
class GcgConfig:
    steps: int = 60
    top_k: int = 32
    candidates: int = 16
    batch_size: int = 16
    eval_every: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        for flag, value, top in (
            ("--steps", self.steps, MAX_STEPS),
            ("--top-k", self.top_k, MAX_TOP_K),
            ("--candidates", self.candidates, MAX_CANDIDATES),
            ("--batch-size", self.batch_size, MAX_BATCH),
            ("--eval-every", self.eval_every, MAX_STEPS),
        ):
            if not 1 <= value <= top:
                raise PromptTuneError(f"{flag} {value}: must be 1-{top:,}.")


def ranked_swaps(grad: torch.Tensor, vocab: Vocabulary, top_k: int) -> torch.Tensor:
    """(n, k) token ids: per position, the k tokens whose embedding most lowers the loss to first order."""
    lin = grad.float().cpu() @ vocab.matrix.T  # (n, V): e_v . grad; the current token's term is the same for all v
    return vocab.ids[lin.topk(min(top_k, len(vocab)), dim=1, largest=False).indices]


def draw_swaps(current: torch.Tensor, top: torch.Tensor, n: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Up to ``n`` distinct token sets, each ``current`` with one position swapped for one of its top tokens."""
    out, seen = [], set()
    positions = torch.randint(top.shape[0], (n,), generator=gen).tolist()
    picks = torch.randint(top.shape[1], (n,), generator=gen).tolist()
    for pos, pick in zip(positions, picks, strict=True):
        token = int(top[pos, pick])
        if token == int(current[pos]) or (pos, token) in seen:
            continue
        seen.add((pos, token))
        ids = current.clone()
        ids[pos] = token
        out.append(ids)
    return out


def run_gcg(
    task: PromptTask,
    vocab: Vocabulary,
    train: Dataset,
    select: Dataset,
    config: GcgConfig,
    callbacks: Sequence[Callback] = (),
) -> SearchResult:
    """Search the soft slots of ``task`` (a prompt-tuning task holding real tokens: ``start_from_tokens``) by swaps."""
    method = task.model.method
    objective = task.objective(train, select, TrainConfig())  # every data error before the first step
    (table,) = [p for p in method.parameters() if p.requires_grad]  # the (n, d) table the slots read
    current = vocab.project(method.table())
    load_tokens(task, vocab, current)
    gen = torch.Generator().manual_seed(config.seed)
    selection = Selection(task, objective, config.steps, callbacks)
    selection.consider(0, current)
    stream = batch_stream(len(objective.y_train), config.batch_size, config.seed)
    accepted = 0
    for step in range(1, config.steps + 1):
        batch = next(stream)
        tick = time.perf_counter()
        with torch.enable_grad():
            loss = objective.batch_loss(batch)
            (grad,) = torch.autograd.grad(loss, [table])
        now = float(loss.detach())
        tried = draw_swaps(current, ranked_swaps(grad, vocab, config.top_k), config.candidates, gen)
        losses = []
        with torch.no_grad():
            for ids in tried:
                load_tokens(task, vocab, ids)
                losses.append(float(objective.batch_loss(batch)))
        if losses and min(losses) < now:
            best = min(range(len(losses)), key=losses.__getitem__)
            if confirmed(task, vocab, objective, current, tried[best], next(stream)):
                current, now = tried[best], losses[best]
                accepted += 1
        load_tokens(task, vocab, current)
        rate = len(batch) * (1 + len(tried)) / max(time.perf_counter() - tick, 1e-9)
        selection.step_event({"step": step, "loss": now, "examples_per_s": rate})
        if step % config.eval_every == 0 or step == config.steps:
            selection.consider(step, current, train_loss=now, swaps_accepted=accepted)
    return selection.finish(vocab, None)
