"""A generation step taken in micro-batches (``GenerationObjective.micro_batch_tokens``): the same loss and
gradient as one pass over the batch, each part weighted by its target tokens, with the constant prefix computed
once per step (``PrefixModel.prefix_once``) rather than once per part."""

from __future__ import annotations

import pytest
import torch

from prompttune.core.data import from_records
from prompttune.generation.task import GenerationTask
from prompttune.train import TrainConfig, Trainer, micro_batches

ROWS = [
    {"input": "a great movie with a long and winding plot", "target": "fun , truly fun and more"},
    {"input": "the cat", "target": "sat"},
    {"input": "I loved it so much that I watched it twice", "target": "a joy"},
    {"input": "boring", "target": "bad , so bad , really bad and long"},
]


def step(backbone, method: str, budget: int | None, monkeypatch) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    task = GenerationTask.create(
        backbone, method, {"num_virtual_tokens": 3}, {"system": "Write.", "user": "[soft]{{ input }}"}, seed=0
    )
    rows = from_records(ROWS)
    objective = task.objective(rows, rows, TrainConfig(lr=0.1))
    objective.micro_batch_tokens = budget
    if budget:
        assert len(micro_batches([0, 1, 2, 3], objective.lengths, budget)) > 1
    calls = []
    inner = task.model.method.prefix_kv
    monkeypatch.setattr(task.model.method, "prefix_kv", lambda *a: calls.append(1) or inner(*a))
    trainer = Trainer(objective, TrainConfig(lr=0.1))
    trainer.optimizer.zero_grad()
    loss = trainer._backward_micro_batches([0, 1, 2, 3])
    grads = [p.grad.clone() for p in task.model.method.parameters() if p.grad is not None]
    return loss, grads, len(calls)


@pytest.mark.parametrize("method", ["prefix-tuning", "prompt-tuning", "p-tuning-v2"])
def test_micro_batches_give_the_whole_batchs_loss_and_gradient_with_one_prefix(tiny_backbone, method, monkeypatch):
    loss, grads, _ = step(tiny_backbone, method, None, monkeypatch)
    loss_parts, grads_parts, prefix_calls = step(tiny_backbone, method, 16, monkeypatch)
    assert grads and len(grads_parts) == len(grads)
    torch.testing.assert_close(loss_parts, loss, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_parts, grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert prefix_calls == 1  # one prefix for the step's parts, not one per part


def test_the_generation_objective_declares_a_token_budget():
    from prompttune.generation.task import GenerationObjective

    assert GenerationObjective.micro_batch_tokens == 1024


def test_the_budget_holds_the_same_bytes_of_activations_whatever_the_dtype(tiny_backbone):
    """A float32 backbone's parts hold half the tokens a bfloat16 one's do (twice the bytes a token)."""
    from types import SimpleNamespace

    from prompttune.batches import activation_tokens

    assert tiny_backbone.model.dtype == torch.float32
    assert activation_tokens(1024, tiny_backbone) == 512
    assert activation_tokens(1024, SimpleNamespace(model=SimpleNamespace(dtype=torch.bfloat16))) == 1024
    rows = from_records(ROWS)
    template = {"user": "[soft]{{ input }}"}
    task = GenerationTask.create(tiny_backbone, "prompt-tuning", {"num_virtual_tokens": 3}, template)
    assert task.objective(rows, rows, TrainConfig()).micro_batch_tokens == 512
