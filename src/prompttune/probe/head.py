"""The probe's head: standardized features, one linear layer, L2-regularized logistic regression.

Trained in full batch with L-BFGS (the features fit in memory: 2,000 rows x 576 floats are 4.6 MB), as
scikit-learn's ``LogisticRegression`` does; the regularization strength is chosen on the validation rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# C as scikit-learn names it (the inverse of the L2 weight; smaller: stronger). The probes behind
# ``features.default_layers`` scored best at 0.001-0.01 and within 2 points at 0.1.
STRENGTHS = (0.001, 0.01, 0.1)
MAX_ITER = 200


class ProbeHead(nn.Module):
    """(rows, features) -> (rows, labels) logits; the standardization is part of the saved state."""

    def __init__(self, n_features: int, n_labels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.linear = nn.Linear(n_features, n_labels)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear((x - self.mean) / self.scale)

    def trainable_state(self) -> dict[str, Tensor]:
        return {k: v.detach().clone().contiguous() for k, v in self.state_dict().items()}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        self.load_state_dict(state)

    def fit(self, x: Tensor, y: Tensor, c: float, max_iter: int = MAX_ITER) -> None:
        """Fit to (x, y) from zero weights: mean cross-entropy + |W|^2 / (2 C n), scikit-learn's objective / n."""
        self.mean.copy_(x.mean(0))
        self.scale.copy_(x.std(0).clamp(min=1e-6))
        z = (x - self.mean) / self.scale
        w = torch.zeros_like(self.linear.weight, requires_grad=True)
        b = torch.zeros_like(self.linear.bias, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-6, line_search_fn="strong_wolfe")
        weight = 1.0 / (2.0 * c * len(x))

        def closure() -> Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(z @ w.T + b, y) + weight * w.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        with torch.no_grad():
            self.linear.weight.copy_(w)
            self.linear.bias.copy_(b)


def choose_strength(
    x: Tensor, y: Tensor, x_val: Tensor, y_val: Tensor, n_labels: int, strengths=STRENGTHS
) -> tuple[float, list[dict]]:
    """The C whose head, fitted on (x, y), scores best on the validation rows (ties: the stronger
    regularization), and every C's validation accuracy."""
    grid = []
    for c in sorted(strengths):
        head = ProbeHead(x.shape[1], n_labels)
        head.fit(x, y, c)
        with torch.no_grad():
            acc = int((head(x_val).argmax(-1) == y_val).sum()) / len(y_val)
        grid.append({"c": c, "val": acc})
    best = max(grid, key=lambda g: (g["val"], -g["c"]))
    return best["c"], grid
