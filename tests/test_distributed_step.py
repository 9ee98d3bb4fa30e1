"""Data-parallel steps and validation in one process: each rank's part played in turn (its all-reduce recorded or
added), checked against one pass over the whole batch or validation set."""

from __future__ import annotations

import pytest
import torch
from test_distributed import GENERATION_ROWS

from prompttune.distributed.context import DistContext
from prompttune.train import TrainConfig


class _OneProcessRanks(DistContext):
    """Plays one rank of ``world`` in this process: the all-reduce records this rank's buffer (summed by the test)."""

    def __init__(self, rank: int, world: int, sink: list):
        super().__init__(rank, world)
        self.sink = sink

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        self.sink.append(tensor.clone())
        return tensor


class _AddsTheOther(DistContext):
    """Plays rank 0 of 2 in this process: the all-reduce adds the buffer rank 1 recorded."""

    def __init__(self, other: torch.Tensor):
        super().__init__(0, 2)
        self.other = other

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.add_(self.other)


def test_a_parameter_no_rank_reached_keeps_no_gradient():
    """As in one process, where the optimizer skips a parameter whose gradient is None (a multi-task step whose
    rows skip a task): a zero gradient instead would still move it by AdamW's momentum and weight decay."""
    from prompttune.distributed.step import backward_shard

    a, b, c = (torch.nn.Parameter(torch.ones(2)) for _ in range(3))
    reaches = {0: a, 1: b}  # row 0 reaches a, row 1 reaches b, no row reaches c

    def backward(part: list[int]) -> torch.Tensor:
        loss = sum((reaches[i] * 3.0).sum() for i in part) / len(part)
        loss.backward()
        return loss.detach()

    sink: list[torch.Tensor] = []
    backward_shard(_OneProcessRanks(1, 2, sink), backward, [a, b, c], [0, 1], 0)  # rank 1: row 1
    for p in (a, b, c):
        p.grad = None
    loss = backward_shard(_AddsTheOther(sink[0]), backward, [a, b, c], [0, 1], 0)  # rank 0: row 0
    assert a.grad.tolist() == b.grad.tolist() == [1.5, 1.5] and c.grad is None
    assert float(loss) == 6.0  # the whole batch's mean loss


def one_process_and_two_ranks(obj, batch: list[int], step: int, weigh=None):
    """``obj``'s flat gradient and loss on ``batch`` in one process, and the buffer two ranks' all-reduce sums
    (their parts' gradients, then the loss; without the per-parameter count of ranks that reached it, which
    follows) when each backpropagates its part (``backward_shard``)."""
    from prompttune.distributed.step import backward_shard

    params = [p for p in obj.trainable.parameters() if p.requires_grad]

    def backward(part: list[int]) -> torch.Tensor:
        loss = obj.batch_loss(part)
        loss.backward()
        return loss.detach()

    for p in params:
        p.grad = None
    whole = backward(batch)
    full = torch.cat([p.grad.reshape(-1) for p in params]).clone()
    sink: list[torch.Tensor] = []
    for rank in range(2):
        for p in params:
            p.grad = None
        backward_shard(_OneProcessRanks(rank, 2, sink), backward, params, batch, step, *([weigh] if weigh else []))
    summed = sink[0] + sink[1]
    assert summed[full.numel() + 1 :].tolist() == [2.0] * len(params)  # every parameter reached on both ranks
    return full, whole, summed[: full.numel() + 1]


def _objective(kind: str, backbone):
    from prompttune.core.data import from_records
    from prompttune.generation.task import GenerationTask
    from prompttune.heads.tagging import TaggingKind
    from prompttune.heads.task import HeadTask

    if kind == "generation":
        rows = from_records(GENERATION_ROWS)
        task = GenerationTask.create(
            backbone, "prompt-tuning", {"num_virtual_tokens": 3}, {"user": "[soft]{{ input }}"}
        )
    else:  # tagging: a mean over labelled words, rows of 2 to 7 words
        words = ["the", "cat", "sat", "on", "a", "warm", "mat"]
        rows = from_records([{"tokens": words[:n], "tags": ["O", "B-ANI"] * 3 + ["O"]} for n in range(2, 8)])
        rows = from_records([{"tokens": r.fields["tokens"], "tags": r.fields["tags"][: len(r.fields["tokens"])]}
                             for r in rows.rows])  # fmt: skip
        task = HeadTask.create(
            backbone, "tokens", TaggingKind.labels_from(rows), "prompt-tuning", {"num_virtual_tokens": 3}
        )
    return task.objective(rows, rows, TrainConfig())


@pytest.mark.parametrize("kind", ["generation", "tokens", "classification", "span"])
def test_validation_split_over_two_ranks_equals_one_process(kind, tiny_backbone):
    """Heads and generation validate sharded too (each rank every other row; the kind's sums added over the
    ranks): the same value as validating every row in one process."""
    from test_heads import CLS, NER, QA

    from prompttune.core.data import from_records
    from prompttune.heads.task import HeadTask

    if kind == "generation":
        obj = _objective("generation", tiny_backbone)
        obj.task.decoding = obj.task.decoding.replace(max_new_tokens=6)
        # references that the random model's outputs match in part, so the inputs' ROUGE-L values differ
        written = obj.task.write([row for row, _ in obj.val])
        assert any(written), "the tiny model wrote nothing: the test would compare zeros"
        obj.val = [(row, [w if i % 3 else "nothing alike", w[: len(w) // 2]]) for i, ((row, _), w) in
                   enumerate(zip(obj.val, written, strict=True))]  # fmt: skip
    else:
        rows = from_records({"tokens": NER, "classification": CLS * 2, "span": QA}[kind])
        labels = sorted({t for r in NER for t in r["tags"]}) if kind == "tokens" else ["negative", "positive"]
        task = HeadTask.create(tiny_backbone, kind, [] if kind == "span" else labels, "prompt-tuning",
                               {"num_virtual_tokens": 3}, seed=1)  # fmt: skip
        obj = task.objective(rows, rows, TrainConfig())
    obj.trainable.eval()
    seen: list[torch.Tensor] = []

    def record(t: torch.Tensor) -> torch.Tensor:  # rank 1's all-reduce: keep its sums
        seen.append(t.clone())
        return t

    obj.validate_shard(1, 2, record)
    split = obj.validate_shard(0, 2, lambda t: t + seen[0])  # rank 0's: the sum of both
    whole = obj.validate()
    assert split == pytest.approx(whole, abs=1e-9)
    assert seen[0][-1] > 0  # rank 1 had rows of its own
    if kind in ("generation", "span"):
        assert 0 < whole  # some overlap with the references: the sums carry information


@pytest.mark.parametrize("kind", ["generation", "tagging"])
def test_ranks_weigh_a_per_token_loss_by_their_tokens_so_they_sum_to_the_whole_batch_gradient(kind, tiny_backbone):
    """A loss that is a mean over tokens (generation targets, tagged words): each rank's part is weighted by its
    share of the tokens, so the summed gradients equal one pass over the whole batch (rows would not)."""
    from functools import partial

    from prompttune.batches import loss_weight_of

    obj = _objective(kind, tiny_backbone)
    obj.trainable.eval()  # the tagging head's dropout draws differently per pass: weigh the same function
    batch = list(range(len(obj.lengths)))
    assert len({loss_weight_of(obj, [i]) for i in batch}) > 1, "rows must differ in tokens for this test to bite"

    full, whole, summed = one_process_and_two_ranks(obj, batch, 0, partial(loss_weight_of, obj))
    torch.testing.assert_close(summed[:-1], full, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(summed[-1], whole.float(), atol=1e-6, rtol=1e-5)
    # weighing the parts by rows, as before, gives another gradient
    rowwise, exact = one_process_and_two_ranks(obj, batch, 0)[2][:-1], summed[:-1]
    assert (rowwise - exact).abs().max() > 1e-3 * exact.abs().max()
