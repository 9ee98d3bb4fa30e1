"""Linear layers for few rows on a CPU: ``W @ x.T`` instead of ``x @ W.T``.

A decoding step runs every linear layer of the frozen decoder on a handful of rows (one new token per row). For
such skinny products the BLAS kernel behind ``F.linear`` (``x @ W.T``: few rows of output, the weight read as its
transpose) is markedly slower on the CPUs measured than the same product laid out the other way, ``(W @ x.T).T``:
the weight's rows become the output's long side, read where they lie, and split between the threads. Measured
in float32 on the 2-core AVX2 machine of this project (``/tmp`` microbenchmark, nothing else running): the
default decoder's 30 layers of projections for 16 rows 102-110 -> 77 ms; its LM head (49,152 x 576) for 16 rows
52 -> 27 ms, for 128 rows 150 -> 95-100 ms; at 256 rows and beyond (training, scoring) the two are even, so
larger inputs keep ``F.linear``.

Same products over the same numbers, summed in another order: outputs agree to float rounding, not bit for bit.
Only float32 on a CPU is switched (where it was measured); other dtypes and devices keep ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SKINNY_ROWS = 128  # rows (all leading dimensions together) up to which the product is taken as W @ x.T


class SkinnyLinear(torch.nn.Linear):
    """``nn.Linear`` whose forward takes few-row float32 CPU inputs as ``(W @ x.T).T``; otherwise ``F.linear``."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if (x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32
                or x.numel() > SKINNY_ROWS * self.in_features):  # fmt: skip
            return folded_linear(x, w, self.bias)
        flat = x.reshape(-1, self.in_features)
        if self.bias is not None:
            y = torch.addmm(self.bias[:, None], w, flat.T)
        else:
            y = torch.matmul(w, flat.T)  # (out, rows)
        return y.T.contiguous().view(*x.shape[:-1], self.out_features)


def folded_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear`` with the input's leading dimensions folded into one first. ``F.linear`` of a 3-D input whose
    dimensions do not fold (a slice such as ``hidden[:, -1:]``, rows ``width`` tokens apart) takes a batched
    product with the weight copied for every row: an LM head (49,152 x 576, bfloat16) over 146 rows' last
    positions held 8 GB and took 14 s, against 12 ms as one 2-D product (float32: 38 ms, no copy). Folded, the
    rows are one matrix (a view where the strides allow, a copy of the rows otherwise, never of the weight)."""
    if x.dim() <= 2:
        return F.linear(x, weight, bias)
    return F.linear(x.reshape(-1, x.shape[-1]), weight, bias).view(*x.shape[:-1], weight.shape[0])


def use_skinny_linears(model: torch.nn.Module) -> int:
    """Switch every plain ``nn.Linear`` of ``model`` (the LM head included) to ``SkinnyLinear`` in place: same
    parameters, same state-dict keys. Returns how many were switched."""
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = SkinnyLinear
            count += 1
    return count
