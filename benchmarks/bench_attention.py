"""One attention layer of the default decoder's shape (9 query heads over 3 key/value heads, head size 64):
transformers' eager attention (``repeat_kv``, then two products) vs ``core.attention.grouped_attention`` (query
heads laid side by side over the shared keys/values; keys read in place for few queries), side by side with
their ratio, and the largest difference between their outputs.

Cases: a decoding step (16 rows, one new token each, over a cache with room to spare: strided keys/values, as
``core.kv_cache.GrowingCache`` hands them over), a training step (16 rows of 100 tokens over a 10-token
prefix, forward and backward), and scoring without gradients (32 short rows; 8 long rows of 1,024 tokens, as
IMDB reviews), where ``grouped_attention`` hands the work to PyTorch's fused ``scaled_dot_product_attention``.

    .venv/bin/python benchmarks/bench_attention.py                 # bfloat16 and float32
    .venv/bin/python benchmarks/bench_attention.py --repeats 5     # a quick look
"""

from __future__ import annotations

import argparse
import time

import torch

from prompttune.core.attention import grouped_attention
from prompttune.core.backbone import set_threads


class _Layer(torch.nn.Module):
    num_key_value_groups = 3


def _eager(module, q, k, v, mask, scaling):
    from transformers.models.llama.modeling_llama import eager_attention_forward

    return eager_attention_forward(module, q, k, v, mask, scaling=scaling)


def _case(dtype, rows: int, queries: int, keys: int, grad: bool):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(rows, 9, queries, 64, dtype=dtype, generator=g).requires_grad_(grad)
    cache = torch.randn(2, rows, 3, keys + 64, 64, dtype=dtype, generator=g)  # room to grow, as in decoding
    k, v = cache[0, :, :, :keys], cache[1, :, :, :keys]
    if grad:  # training's keys/values are the layer's fresh outputs, contiguous
        k, v = k.clone().requires_grad_(True), v.clone().requires_grad_(True)
    mask = torch.zeros(rows, 1, queries, keys, dtype=dtype)
    mask[: rows // 4, :, :, :5] = torch.finfo(dtype).min  # some left padding
    return q, k, v, mask


def _time(fn, args, grad: bool, repeats: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeats + 2):
        t0 = time.perf_counter()
        out = fn(_Layer(), *args, scaling=0.125)[0]
        if grad:
            out.float().square().sum().backward()
        times.append(time.perf_counter() - t0)
    return sorted(times[2:])[len(times[2:]) // 2], out.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30, help="timed calls per case (the median is reported)")
    args = ap.parse_args()
    if args.repeats < 1 or args.repeats > 10_000:
        ap.error("--repeats: give 1 to 10000")
    set_threads()
    cases = [("decoding step: 16 rows x 1 token over 150", 16, 1, 150, False)]
    cases.append(("training: 16 rows x 100 tokens over 110, fwd+bwd", 16, 100, 110, True))
    cases.append(("scoring: 32 rows x 40 tokens over 70, no grad", 32, 40, 70, False))
    cases.append(("scoring: 8 rows x 1,024 tokens over 1,064, no grad", 8, 1024, 1064, False))
    print(f"one attention layer, 9 query heads over 3 key/value heads, head size 64; threads {torch.get_num_threads()}")
    print(f"{'case':52s} {'dtype':9s} {'eager ms':>9s} {'grouped ms':>11s} {'ratio':>6s} {'max diff':>9s}")
    for dtype in (torch.bfloat16, torch.float32):
        for name, rows, queries, keys, grad in cases:
            eager_s, ref = _time(_eager, _case(dtype, rows, queries, keys, grad), grad, args.repeats)
            ours_s, out = _time(grouped_attention, _case(dtype, rows, queries, keys, grad), grad, args.repeats)
            diff = (out.float() - ref.float()).abs().max().item()
            kind = str(dtype).removeprefix("torch.")
            print(
                f"{name:52s} {kind:9s} {eager_s * 1e3:9.2f} {ours_s * 1e3:11.2f} {eager_s / ours_s:5.2f}x {diff:9.2g}"
            )


if __name__ == "__main__":
    main()
