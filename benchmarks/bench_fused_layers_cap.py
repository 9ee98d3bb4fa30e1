"""How far hand-fused decoder layers would lift 2-rank data-parallel speed-up on this machine: a bound, not a feature.

``bench_step_floor.py`` shows that a training step's fixed part (what it costs whatever its rows) caps 2 ranks at
the recipe's batch of 16. Most of that part is operator calls: transformers' Llama layer runs ~130 operators
forward and more backward (views, slices, casts, rotary halves, autograd nodes). This benchmark asks what is left
when all of that is gone: every decoder layer of the default decoder (its real frozen weights) as one
``torch.autograd.Function`` with a hand-written backward for the input's gradient only (weights frozen, as in
prompt training), the fewest PyTorch operators measured here: one product for q/k/v, one for gate/up, closed-form
RMSNorm and softmax backward, rotary embedding's transpose as ``g cos - rot(g sin)``, and the products' weights
pre-packed for oneDNN (``torch.ops.mkldnn._linear_pointwise``) when the build has it. Printed against transformers'
layers: with ``--no-pack --dtype float32`` the forward output is equal and the input's gradient agrees to 2e-6
(relative); in bfloat16 (packed or not) the output is equal and the gradient agrees to ~2e-2, bfloat16 sums taken
in another order. (Packed float32 kernels sum in another order too: 1e-3.)

It times, with 1 thread, the 30 layers forward and backward on 1 + n sequences of ``--tokens`` tokens (the one-pass
batch of the recipe: the soft tokens' sequence and n rows; 19 is the recipe's median SST-2 batch width), for the
decoder as shipped (transformers' layers with prompttune's grouped attention and lean norm and MLP, key
"transformers") and for the fused layers (key "fused"):

1. a step of 1, B/2 and B rows alone, hence T(B) / T(B/2), the 2-rank ceiling without communication;
2. two processes each stepping B/2 rows at the same time against one process stepping B rows (``--pair``): the
   2-rank throughput ratio with both cores busy, what ``prompttune train --nproc 2`` could reach at best with
   such layers (no all-reduce, no data loading, no label words).

    .venv/bin/python benchmarks/bench_fused_layers_cap.py [--batch-size 16] [--tokens 19] [--repeats 7] [--pair]
        [--no-pack] [--dtype auto|float32]

Prints one JSON object. Nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None)


class Weights:
    """One layer's frozen weights: q/k/v and gate/up stacked, each product's weight (and its transpose, for the
    input's gradient) pre-packed for oneDNN when ``pack``."""

    def __init__(self, layer, pack: bool, tokens_hint: int):
        a, p = layer.self_attn, layer.mlp
        self.mats = {
            "qkv": torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).contiguous(),
            "o": a.o_proj.weight.detach(),
            "gu": torch.cat([p.gate_proj.weight, p.up_proj.weight]).contiguous(),
            "d": p.down_proj.weight.detach(),
        }
        self.n1, self.n2 = layer.input_layernorm.weight.detach(), layer.post_attention_layernorm.weight.detach()
        self.eps = layer.input_layernorm.variance_epsilon
        self.packed = {}
        if pack:
            reorder = torch.ops.mkldnn._reorder_linear_weight
            for k, w in self.mats.items():
                self.packed[k] = (reorder(w, tokens_hint), reorder(w.t().contiguous(), tokens_hint))

    def fwd(self, x, k):  # x @ W.T
        if self.packed:
            return _LINEAR(x, self.packed[k][0], None, "none", [], "")
        return F.linear(x, self.mats[k])

    def bwd(self, g, k):  # g @ W: the input's gradient
        if self.packed:
            return _LINEAR(g, self.packed[k][1], None, "none", [], "")
        return g @ self.mats[k]


def _rms(x, w, eps):
    xf = x.float()
    r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * (xf * r).to(x.dtype), r


def _rms_bwd(g, x, r, w):
    n = x.float() * r
    g = (g * w).float()
    return (r * (g - n * (g * n).mean(-1, keepdim=True))).to(x.dtype)


def _rot(x):  # transformers' rotate_half
    x1, x2 = x.chunk(2, -1)
    return torch.cat((-x2, x1), -1)


class FusedLayer(torch.autograd.Function):
    """A Llama decoder layer (grouped-query attention, SwiGLU) with frozen weights: forward and the input's
    gradient, nothing else recorded. ``shape`` = (heads, kv_heads, head_dim)."""

    @staticmethod
    def forward(ctx, x, w: Weights, shape, mask, cos, sin):
        (b, n, _), (h, kv, hd) = x.shape, shape
        g = h // kv
        hn, r1 = _rms(x, w.n1, w.eps)
        q, k, v = w.fwd(hn, "qkv").split([h * hd, kv * hd, kv * hd], -1)
        q, k = q.view(b, n, h, hd).transpose(1, 2), k.view(b, n, kv, hd).transpose(1, 2)
        v = v.view(b, n, kv, hd).transpose(1, 2)
        q, k = q * cos + _rot(q) * sin, k * cos + _rot(k) * sin
        qg = q.reshape(b, kv, g * n, hd)
        s = torch.matmul(qg, k.transpose(2, 3)).mul_(hd**-0.5).view(b, kv, g, n, n).add_(mask).view(b, kv, g * n, n)
        p = torch.softmax(s, -1, dtype=torch.float32).to(x.dtype)
        o = torch.matmul(p, v).view(b, h, n, hd).transpose(1, 2).reshape(b, n, h * hd)
        x2 = x + w.fwd(o, "o")
        h2, r2 = _rms(x2, w.n2, w.eps)
        gate, up = w.fwd(h2, "gu").chunk(2, -1)
        ctx.w, ctx.shape = w, shape
        ctx.save_for_backward(x, r1, qg, k, v, p, x2, r2, gate, up, cos, sin)
        return x2 + w.fwd(F.silu(gate) * up, "d")

    @staticmethod
    def backward(ctx, dout):
        x, r1, qg, k, v, p, x2, r2, gate, up, cos, sin = ctx.saved_tensors
        w, (h, kv, hd) = ctx.w, ctx.shape
        b, n, _ = x.shape
        dm = w.bwd(dout, "d")
        dgu = torch.cat([torch.ops.aten.silu_backward(dm * up, gate), dm * F.silu(gate)], -1)
        dx2 = dout + _rms_bwd(w.bwd(dgu, "gu"), x2, r2, w.n2)
        do = w.bwd(dx2, "o").view(b, n, h, hd).transpose(1, 2).reshape(b, kv, (h // kv) * n, hd)
        ds = torch.ops.aten._softmax_backward_data(torch.matmul(do, v.transpose(2, 3)), p, -1, p.dtype).mul_(hd**-0.5)
        dq = torch.matmul(ds, k).view(b, h, n, hd)
        dk, dv = torch.matmul(ds.transpose(2, 3), qg), torch.matmul(p.transpose(2, 3), do)
        dq, dk = dq * cos - _rot(dq * sin), dk * cos - _rot(dk * sin)
        flat = [t.transpose(1, 2).reshape(b, n, -1) for t in (dq, dk, dv)]
        return dx2 + _rms_bwd(w.bwd(torch.cat(flat, -1), "qkv"), x, r1, w.n1), None, None, None, None, None


class Bench:
    def __init__(self, tokens: int, pack: bool, dtype: str = "auto"):
        from prompttune.core.backbone import Backbone

        self.model = Backbone.load(None, dtype=dtype).model
        cfg = self.model.config
        self.shape = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
        self.pack = pack and _LINEAR is not None
        self.weights = [Weights(layer, self.pack, 17 * tokens) for layer in self.model.model.layers]
        self.tokens, self.dtype = tokens, self.model.dtype
        cos, sin = self.model.model.rotary_emb(torch.zeros(1, dtype=self.dtype), torch.arange(tokens)[None])
        self.cos, self.sin = cos[:, None], sin[:, None]
        self.mask = torch.full((tokens, tokens), torch.finfo(self.dtype).min).triu(1).to(self.dtype)

    def fused(self, x):
        for w in self.weights:
            x = FusedLayer.apply(x, w, self.shape, self.mask, self.cos, self.sin)
        return self.model.model.norm(x)

    def transformers(self, x):
        return self.model.model(inputs_embeds=x, use_cache=False).last_hidden_state

    def rows(self, n: int):
        return (torch.randn(1 + n, self.tokens, self.model.config.hidden_size) * 0.5).to(self.dtype).requires_grad_()

    def step_ms(self, impl: str, n: int, repeats: int) -> float:
        fn = getattr(self, impl)
        runs = []
        for _ in range(repeats + 1):  # the first builds kernels for the shapes
            x = self.rows(n)
            t0 = time.perf_counter()
            fn(x).float().pow(2).mean().backward()
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs[1:]) * 1e3

    def agreement(self) -> dict:
        x = self.rows(2)
        y0 = self.transformers(x)
        y0.float().sum().backward()
        g0, x.grad = x.grad.float(), None
        y1 = self.fused(x)
        y1.float().sum().backward()
        return {
            "forward_max_abs_diff": (y1 - y0).abs().max().item(),
            "input_grad_rel_diff": ((x.grad.float() - g0).norm() / g0.norm()).item(),
        }


def _pair(args, impl: str, n: int) -> float:
    """Rows/s of two processes each stepping n rows at the same time (the sum), started together."""
    start = time.time() + 60  # both load the model first
    cmd = [sys.executable, __file__, "--worker", impl, "--rows", str(n), "--start", str(start)]
    cmd += ["--tokens", str(args.tokens), "--repeats", str(args.repeats), "--dtype", args.dtype]
    cmd += [] if args.pack else ["--no-pack"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    out = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a worker failed: {' '.join(cmd)}")
    return sum(o["rows_per_s"] for o in out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=16, help="the global batch (two ranks get half each)")
    ap.add_argument("--tokens", type=int, default=19, help="tokens a sequence (the recipe's median SST-2 width)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--pair", action="store_true", help="also run two processes at once (each loads the model)")
    ap.add_argument("--no-pack", dest="pack", action="store_false", help="plain products, no oneDNN packing")
    ap.add_argument("--dtype", default="auto", help="float32 checks the fused gradient to float rounding (1e-6)")
    ap.add_argument("--worker", choices=["fused", "transformers"], help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--start", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.batch_size < 2 or args.batch_size % 2:
        sys.exit(f"--batch-size {args.batch_size}: give an even number of rows, 2 or more")
    if not 1 <= args.tokens <= 512:
        sys.exit(f"--tokens {args.tokens}: give 1 to 512")
    torch.set_num_threads(1)  # as each rank of `--nproc 2` on 2 cores, and the 1-process baseline
    bench = Bench(args.tokens, args.pack, args.dtype)
    if args.worker:
        bench.step_ms(args.worker, args.rows, 1)
        time.sleep(max(0.0, args.start - time.time()))
        ms = bench.step_ms(args.worker, args.rows, args.repeats * 2)
        print(json.dumps({"rows_per_s": args.rows / ms * 1e3}))
        return
    half, full = args.batch_size // 2, args.batch_size
    res = {"threads": 1, "tokens": args.tokens, "packed_weights": bench.pack, **bench.agreement()}
    for impl in ("transformers", "fused"):
        t = {n: bench.step_ms(impl, n, args.repeats) for n in (1, half, full)}
        r = (t[full] - t[1]) / (full - 1)
        row = {
            "step_ms": {str(n): round(v, 1) for n, v in t.items()},
            "fixed_ms": round(t[1] - r, 1),
            "ms_per_row": round(r, 1),
            "cap_two_ranks": round(t[full] / t[half], 3),
        }
        if args.pair:
            one = full / bench.step_ms(impl, full, args.repeats * 2) * 1e3
            row["one_process_rows_per_s"] = round(one, 2)
            row["two_processes_rows_per_s"] = round(_pair(args, impl, half), 2)
            row["two_process_ratio"] = round(row["two_processes_rows_per_s"] / one, 3)
        res[impl] = row
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
