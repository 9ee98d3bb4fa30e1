"""generation/lm_loss.py: the chunked target loss equals cross-entropy over the full logits, value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prompttune.generation import lm_loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 5, 13])
def test_equals_cross_entropy(monkeypatch, dtype, n):
    monkeypatch.setattr(lm_loss, "CHUNK", 4)  # several chunks, the last one short
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False).to(dtype).requires_grad_(False)
    base = torch.randn(n, 8)
    labels = torch.randint(0, 50, (n,))
    h1 = base.to(dtype).requires_grad_(True)
    h2 = base.to(dtype).requires_grad_(True)
    ours = lm_loss.target_loss(h1, head, labels)
    ref = F.cross_entropy(head(h2).float(), labels)
    (ours * 3).backward()
    (ref * 3).backward()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(ours, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(h1.grad.float(), h2.grad.float(), atol=tol, rtol=tol)


def test_bias_and_no_grad():
    head = torch.nn.Linear(6, 20).requires_grad_(False)
    h = torch.randn(3, 6)
    labels = torch.tensor([1, 2, 19])
    torch.testing.assert_close(lm_loss.target_loss(h, head, labels), F.cross_entropy(head(h), labels))


def test_a_trained_head_keeps_its_gradient():
    head = torch.nn.Linear(6, 20)
    lm_loss.target_loss(torch.randn(3, 6), head, torch.tensor([1, 2, 3])).backward()
    assert head.weight.grad is not None


def test_no_targets_named():
    with pytest.raises(ValueError, match="no target tokens"):
        lm_loss.target_loss(
            torch.zeros(0, 6), torch.nn.Linear(6, 20).requires_grad_(False), torch.zeros(0, dtype=torch.long)
        )
