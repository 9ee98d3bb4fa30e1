"""prompttune vs PEFT: same method, model, rows, template, batch size, virtual tokens, steps.

--method prompt-tuning (default), p-tuning (PEFT's PromptEncoder, MLP; prompttune's encoder at the same
learning rate as PEFT's, encoder_lr_scale 1), prefix-tuning (PEFT's PrefixTuningConfig with its MLP
projection; prompttune's prefix-tuning with the same MLP width), p-tuning-v2 (PEFT's PrefixTuningConfig
without projection: the per-layer table trained directly), or all (each in turn, then one table of ratios).

Each side runs in its own process (so peak RSS is its own), then the ratios are printed:

    .venv/bin/python benchmarks/bench_vs_peft.py                    # SST-2 from ../shared/data
    .venv/bin/python benchmarks/bench_vs_peft.py --steps 30 --eval-rows 200   # quicker
    .venv/bin/python benchmarks/bench_vs_peft.py --method all --steps 10 --warmup 2 --train-rows 400 --eval-rows 400

PEFT side: ``get_peft_model(model, <the method's PEFT config>)``, trained the way PEFT's examples do it
(the whole prompt + label in one sequence, causal-LM loss on the label tokens), evaluated by the
next-token logits of the label words at the last position. prompttune side: ``PromptTask`` +
``PromptTask.fit`` (cached constant prefix, label-rows-only read-out, length-bucketed batches).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sst2" / "train.jsonl"
METHODS = ("prompt-tuning", "p-tuning", "prefix-tuning", "p-tuning-v2")  # those PEFT also has
SYSTEM = "Classify the text. Possible labels: negative, positive. Reply with the label only."


def rows(args):
    if not DATA.exists():
        sys.exit(f"{DATA}: missing. This benchmark reads SST-2 from ../shared/data (see its README).")
    lines = DATA.read_text().splitlines()
    data = [json.loads(x) for x in lines]
    return data[: args.train_rows], data[-args.eval_rows :]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_prompttune(args) -> dict:
    import torch

    from prompttune.api import PromptTask
    from prompttune.core.backbone import Backbone, set_threads
    from prompttune.core.data import Dataset, from_records
    from prompttune.train import TrainConfig

    set_threads()
    train, test = rows(args)
    backbone = Backbone.load(args.model, dtype=args.dtype)
    tmpl = {"system": SYSTEM, "user": "[soft]{{ text }}"}
    config = {"num_virtual_tokens": args.virtual_tokens, "init": "vocab"}
    config |= {
        "p-tuning": {"encoder_hidden": args.encoder_hidden, "encoder_lr_scale": 1.0},  # PEFT's: one rate
        "prefix-tuning": {"prefix_hidden": args.encoder_hidden},
        "p-tuning-v2": {"prefix_hidden": 0},
    }.get(args.method, {})
    task = PromptTask.create(backbone, ["negative", "positive"], args.method, config, tmpl, seed=0)
    tr, te = from_records(train), from_records(test)
    cfg = TrainConfig(
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_every=10**9,
        patience=10**9,
        warmup_steps=args.warmup,
    )
    res = task.fit(tr, Dataset(te.rows[:2], te.source), cfg)
    # keep the last state (PEFT's side has no validation-based selection either)
    report = task.evaluate(te, batch_size=args.eval_batch_size, calibrate=False)
    return {
        "train_examples_per_s": res.train_examples_per_s,
        "train_seconds": res.train_seconds,
        "eval_examples_per_s": report["examples_per_s"],
        "accuracy": report["accuracy"],
        "peak_rss_mb": peak_rss_mb(),
        "steps": res.steps,
        "threads": torch.get_num_threads(),
    }


def run_peft(args) -> dict:
    import torch
    from peft import (
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptTuningConfig,
        PromptTuningInit,
        TaskType,
        get_peft_model,
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    from prompttune.core import defaults
    from prompttune.core.backbone import set_threads

    set_threads()
    torch.manual_seed(0)
    train, test = rows(args)
    _, where = defaults.resolve(args.model)
    tok = AutoTokenizer.from_pretrained(where)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype)
    n, hidden = args.virtual_tokens, args.encoder_hidden
    cfg = {
        "prompt-tuning": lambda: PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n, prompt_tuning_init=PromptTuningInit.RANDOM
        ),
        "p-tuning": lambda: PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n, encoder_hidden_size=hidden
        ),
        "prefix-tuning": lambda: PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n, prefix_projection=True, encoder_hidden_size=hidden
        ),
        "p-tuning-v2": lambda: PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n, prefix_projection=False
        ),
    }[args.method]()
    model = get_peft_model(model, cfg)
    if args.method in ("prompt-tuning", "p-tuning"):
        # Same init as prompttune's --init vocab: embeddings of tokens sampled from the 5,000 most frequent ids.
        emb = model.get_input_embeddings().weight
        ids = torch.randint(0, 5000, (args.virtual_tokens,))
        with torch.no_grad():
            model.prompt_encoder["default"].embedding.weight.copy_(emb[ids])

    def prompt(text):
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    label_ids = [tok(w, add_special_tokens=False).input_ids for w in ("negative", "positive")]
    first = torch.tensor([x[0] for x in label_ids])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, args.warmup, args.steps)
    model.train()
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=gen).tolist()
    step, seen, pos = 0, 0, 0
    t0 = time.perf_counter()
    while step < args.steps:
        if pos + args.batch_size > len(order):
            order, pos = torch.randperm(len(train), generator=gen).tolist(), 0
        batch = [train[i] for i in order[pos : pos + args.batch_size]]
        pos += args.batch_size
        seqs, labs = [], []
        for r in batch:
            p = tok(prompt(r["text"]), add_special_tokens=False).input_ids
            a = tok(r["label"], add_special_tokens=False).input_ids
            seqs.append(p + a)
            labs.append([-100] * len(p) + a)
        width = max(map(len, seqs))
        input_ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        sched.step()
        step += 1
        seen += len(batch)
    train_seconds = time.perf_counter() - t0
    model.eval()
    tok.padding_side = "left"
    correct = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(test), args.eval_batch_size):
            b = test[i : i + args.eval_batch_size]
            enc = tok([prompt(r["text"]) for r in b], add_special_tokens=False, return_tensors="pt", padding=True)
            logits = model(**enc).logits[:, -1, first]
            pred = logits.argmax(-1).tolist()
            correct += sum(("negative", "positive")[p] == r["label"] for p, r in zip(pred, b, strict=True))
    eval_seconds = time.perf_counter() - t0
    return {
        "train_examples_per_s": seen / train_seconds,
        "train_seconds": train_seconds,
        "eval_examples_per_s": len(test) / eval_seconds,
        "accuracy": correct / len(test),
        "peak_rss_mb": peak_rss_mb(),
        "steps": step,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=["both", "prompttune", "peft"], default="both")
    ap.add_argument("--method", choices=[*METHODS, "all"], default="prompt-tuning")
    ap.add_argument("--encoder-hidden", type=int, default=128, help="P-tuning encoder / prefix MLP width, both sides")
    ap.add_argument("--model", default=None, help="backbone (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="backbone precision, the same on both sides"
    )
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--eval-batch-size", type=int, default=32)
    ap.add_argument("--virtual-tokens", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=6)
    ap.add_argument("--train-rows", type=int, default=2000)
    ap.add_argument("--eval-rows", type=int, default=500)
    args = ap.parse_args()
    if args.side != "both":
        result = (run_prompttune if args.side == "prompttune" else run_peft)(args)
        print(json.dumps(result))
        return
    methods = METHODS if args.method == "all" else (args.method,)
    summary = {m: one_method(args, m) for m in methods}
    if len(methods) > 1:
        print(f"\nall methods, prompttune / PEFT ({args.dtype}, {args.steps} steps, {args.eval_rows} eval rows)")
        print(f"{'method':16}{'train ex/s':>12}{'eval ex/s':>12}{'peak RSS':>10}{'accuracy':>18}")
        for m, (a, b) in summary.items():
            print(
                f"{m:16}{a['train_examples_per_s'] / b['train_examples_per_s']:11.2f}x"
                f"{a['eval_examples_per_s'] / b['eval_examples_per_s']:11.2f}x"
                f"{a['peak_rss_mb'] / b['peak_rss_mb']:9.2f}x"
                f"{a['accuracy']:10.3f} vs {b['accuracy']:.3f}"
            )
    print(json.dumps({m: {"prompttune": a, "peft": b} for m, (a, b) in summary.items()}))


def one_method(args, method: str) -> tuple[dict, dict]:
    """Both sides of one method, each in its own process; prints their figures and ratios."""
    args = argparse.Namespace(**{**vars(args), "method": method})
    results = {}
    for side in ("prompttune", "peft"):
        cmd = [sys.executable, __file__, "--side", side] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "side" and v is not None
        ]
        print(f"running {side} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{side} failed:\n{proc.stderr[-3000:]}")
        results[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    a, b = results["prompttune"], results["peft"]
    print(
        f"{args.method}; model {args.model or 'smollm2-135m-instruct'} ({args.dtype}); "
        f"{args.steps} steps x batch {args.batch_size}, "
        f"{args.virtual_tokens} virtual tokens, lr {args.lr}; eval on {args.eval_rows} held-out SST-2 rows"
    )
    print(f"{'':24}{'prompttune':>12}{'PEFT':>12}{'ratio':>9}")
    for key, label in (
        ("train_examples_per_s", "train examples/s"),
        ("eval_examples_per_s", "eval examples/s"),
        ("accuracy", "accuracy"),
        ("peak_rss_mb", "peak RSS (MB)"),
    ):
        ratio = a[key] / b[key] if b[key] else float("nan")
        print(f"{label:24}{a[key]:12.3f}{b[key]:12.3f}{ratio:8.2f}x")
    print(f"accuracy difference: {100 * (a['accuracy'] - b['accuracy']):+.1f} points", flush=True)
    return a, b


if __name__ == "__main__":
    main()
