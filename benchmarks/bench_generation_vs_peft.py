"""prompttune vs PEFT on a generation task (issue 14): prefix tuning on E2E NLG, same model, rows, template, batch,
virtual tokens, MLP width and steps; then greedy generation with the same prefix.

Three figures, side by side with their ratio:
- training examples/s: prompttune's ``GenerationTask.fit`` (constant prefix computed once per step at batch size
  1, target-token-only read-out, length-bucketed batches) vs PEFT's ``get_peft_model(PrefixTuningConfig(
  prefix_projection=True))`` trained as PEFT's examples do (prompt + target in one sequence, labels -100 on the
  prompt), both with the language-modelling loss on the target tokens;
- generation tokens/s: prompttune's greedy decoding over its cached prefix (continuous batching: at most
  ``--batch-size`` rows at once, a finished row's slot taken by the next input) vs PEFT's ``generate`` on
  batches of ``--batch-size`` rows (left padding, greedy, same end tokens, no repetition control on either
  side). PEFT writes from the prefix prompttune trained (its per-layer key/value table loaded as PEFT's
  ``prompt_embeddings``, projection off), passed to ``generate`` as its cache (``with_prefix``: PEFT 0.21's own
  ``generate`` drops the prefix under transformers 5.x), so both sides write the same tokens (the run counts
  identical outputs); without prompttune's table (``--side peft`` alone) PEFT uses its own;
- training peak RSS (MB, each side in its own process, read right after training).

Rows: E2E NLG from ../shared/data/e2e_nlg/dev.jsonl (read in place, never copied), targets of at most
``--max-target-tokens`` (64) tokens; training rows from the start of the file, generation inputs (distinct
meaning representations) from its end. The template is one chat user turn with the meaning representation; the
answer is the target, ended by the chat's end-of-turn token.

    .venv/bin/python benchmarks/bench_generation_vs_peft.py --dtype bfloat16      # 30 steps x 16 rows, 64 inputs
    .venv/bin/python benchmarks/bench_generation_vs_peft.py --dtype bfloat16 --rounds 3   # medians of 3 rounds
    .venv/bin/python benchmarks/bench_generation_vs_peft.py --steps 2 --train-rows 8 --gen-rows 8 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "e2e_nlg" / "dev.jsonl"


def rows(args, tok) -> tuple[list[dict], list[str]]:
    """(training rows, generation inputs): targets of at most --max-target-tokens tokens; inputs from the end."""
    if not DATA.exists():
        sys.exit(f"{DATA}: missing. This benchmark reads E2E NLG from ../shared/data (see its README).")
    data = [json.loads(x) for x in DATA.read_text().splitlines() if x.strip()]
    short = [r for r in data if len(tok(r["target"], add_special_tokens=False).input_ids) <= args.max_target_tokens]
    train = short[: args.train_rows]
    seen = {r["input"] for r in train}
    inputs = list(dict.fromkeys(r["input"] for r in reversed(data) if r["input"] not in seen))[: args.gen_rows]
    return train, inputs


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count_tokens(tok, texts: list[str]) -> int:
    return sum(len(tok(t, add_special_tokens=False).input_ids) for t in texts)


def run_prompttune(args) -> dict:
    import torch
    from safetensors.torch import save_file

    from prompttune.core.backbone import Backbone, set_threads
    from prompttune.core.data import Dataset, from_records
    from prompttune.core.generate import GenerationConfig
    from prompttune.generation.decode import greedy_batch
    from prompttune.generation.task import GenerationTask
    from prompttune.train import TrainConfig

    set_threads()
    backbone = Backbone.load(args.model, dtype=args.dtype)
    train, inputs = rows(args, backbone.tokenizer)
    config = {"num_virtual_tokens": args.virtual_tokens, "prefix_hidden": args.encoder_hidden}
    task = GenerationTask.create(backbone, "prefix-tuning", config, {"user": "[soft]{{ input }}"}, seed=0)
    tr = from_records(train)
    cfg = TrainConfig(
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_every=10**9,
        patience=10**9,
        warmup_steps=args.warmup,
        ema=0.0,
        time_budget_s=None,
    )
    res = task.fit(tr, Dataset(tr.rows[:2], tr.source), cfg)  # the last state is kept: no selection on PEFT's side
    train_rss = peak_rss_mb()
    task.model.method.eval()
    if args.table:
        save_file({"prompt_embeddings": task.model.method.table().detach().float().contiguous()}, args.table)
    decoding = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        draft_tokens=args.draft_tokens,
    )
    examples = task.model.encode(from_records([{"input": x} for x in inputs]).rows, targets=False)
    order = sorted(range(len(inputs)), key=lambda i: len(examples[i].ids))
    examples = [examples[i] for i in order]
    t0 = time.perf_counter()
    prefix = task.model.cached_prefix() or None  # once per artifact, counted here
    # continuous batching: --batch-size rows write at once, a finished row's slot goes to the next input
    ids = [x.ids for x in examples]
    texts = greedy_batch(backbone, ids, prefix, task.model.row_inputs, decoding, slots=args.batch_size)
    gen_seconds = time.perf_counter() - t0
    tokens = count_tokens(backbone.tokenizer, texts)
    return {
        "train_examples_per_s": res.train_examples_per_s,
        "train_seconds": res.train_seconds,
        "gen_tokens_per_s": tokens / gen_seconds,
        "gen_tokens": tokens,
        "gen_seconds": gen_seconds,
        "train_peak_rss_mb": train_rss,
        "steps": res.steps,
        "threads": torch.get_num_threads(),
        "sample": texts[0] if texts else "",
        "outputs": {inputs[i]: t for i, t in zip(order, texts, strict=True)},
    }


def run_peft(args) -> dict:
    import torch
    from peft import PrefixTuningConfig, TaskType, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    from prompttune.core import defaults
    from prompttune.core.backbone import set_threads

    set_threads()
    torch.manual_seed(0)
    _, where = defaults.resolve(args.model)
    tok = AutoTokenizer.from_pretrained(where)
    train, inputs = rows(args, tok)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    base = AutoModelForCausalLM.from_pretrained(where, dtype=dtype)
    cfg = PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=args.virtual_tokens,
        prefix_projection=True,
        encoder_hidden_size=args.encoder_hidden,
    )
    model = get_peft_model(base, cfg)

    def prompt(text):
        return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)

    end = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else tok.eos_token_id
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
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
            p = tok(prompt(r["input"]), add_special_tokens=False).input_ids
            a = tok(r["target"], add_special_tokens=False).input_ids + [end]
            seqs.append(p + a)
            labs.append([-100] * len(p) + a)
        width = max(map(len, seqs))
        input_ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        step += 1
        seen += len(batch)
    train_seconds = time.perf_counter() - t0
    train_rss = peak_rss_mb()
    same_prefix = bool(args.table and Path(args.table).exists())
    if same_prefix:  # prompttune's trained prefix, as PEFT's own table (no projection at inference)
        table = load_file(args.table)["prompt_embeddings"]
        plain = PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=args.virtual_tokens, prefix_projection=False
        )
        # A fresh copy of the base model: a second get_peft_model on the trained one kept writing from PEFT's own
        # prefix (every output ran to max_new_tokens, none matched prompttune's)
        fresh = AutoModelForCausalLM.from_pretrained(where, dtype=dtype)
        model = get_peft_model(fresh, plain)
        weight = model.prompt_encoder["default"].embedding.weight
        if weight.shape != table.shape:
            sys.exit(f"prompttune's prefix table {tuple(table.shape)} does not fit PEFT's {tuple(weight.shape)}")
        with torch.no_grad():
            weight.copy_(table.to(weight.dtype))
    model.eval()
    tok.padding_side = "left"
    ordered = sorted(inputs, key=lambda x: len(tok(prompt(x), add_special_tokens=False).input_ids))
    texts = []
    ends = sorted({end, tok.eos_token_id} - {None})
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(ordered), args.batch_size):
            enc = tok([prompt(x) for x in ordered[i : i + args.batch_size]], add_special_tokens=False,
                      return_tensors="pt", padding=True)  # fmt: skip
            ids, mask, cache = with_prefix(model, enc)
            out = model.get_base_model().generate(
                input_ids=ids,
                attention_mask=mask,
                past_key_values=cache,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                eos_token_id=ends,
                pad_token_id=tok.pad_token_id,
            )
            texts += tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    gen_seconds = time.perf_counter() - t0
    tokens = count_tokens(tok, texts)
    return {
        "train_examples_per_s": seen / train_seconds,
        "train_seconds": train_seconds,
        "gen_tokens_per_s": tokens / gen_seconds,
        "gen_tokens": tokens,
        "gen_seconds": gen_seconds,
        "train_peak_rss_mb": train_rss,
        "steps": step,
        "threads": torch.get_num_threads(),
        "same_prefix": same_prefix,
        "sample": texts[0] if texts else "",
        "outputs": dict(zip(ordered, texts, strict=True)),
    }


def with_prefix(model, enc):
    """PEFT's prefix as the generation cache, as ``PeftModelForCausalLM.prepare_inputs_for_generation`` means to
    pass it. Under transformers 5.x ``model.generate`` drops it: generate builds its own empty cache first, so PEFT
    0.21 never adds the prefix and writes as the bare model (checked: a prefix of noise changes PEFT's forward
    and leaves its generate's text as it was). The rows, left-padded, follow the prefix's keys/values; a dummy
    token stands for each virtual one (generate skips the tokens the cache already holds); positions count from
    the prefix's end, as in PEFT's training forward."""
    import torch
    from transformers import DynamicCache

    b = enc["input_ids"].shape[0]
    prompt = model.get_prompt(batch_size=b)
    if hasattr(prompt, "layers"):
        cache = prompt
    else:  # per layer a [2, batch, heads, virtual tokens, head_dim] tensor
        cache = DynamicCache(ddp_cache_data=[(t[0], t[1]) for t in prompt], config=model.get_base_model().config)
    n = cache.get_seq_length()
    dummy = torch.full((b, n), int(enc["input_ids"][0, -1]), dtype=enc["input_ids"].dtype)
    ids = torch.cat([dummy, enc["input_ids"]], dim=1)
    mask = torch.cat([torch.ones(b, n, dtype=enc["attention_mask"].dtype), enc["attention_mask"]], dim=1)
    return ids, mask, cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=["both", "prompttune", "peft"], default="both")
    ap.add_argument("--model", default=None, help="backbone (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="the same on both sides")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=16, help="training and generation batch, both sides")
    ap.add_argument("--virtual-tokens", type=int, default=10)
    ap.add_argument("--encoder-hidden", type=int, default=512, help="prefix MLP width, both sides")
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--train-rows", type=int, default=1000)
    ap.add_argument("--gen-rows", type=int, default=64, help="distinct inputs to generate for")
    ap.add_argument("--max-target-tokens", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument(
        "--draft-tokens",
        type=int,
        default=0,
        help="prompttune's side: prompt-lookup decoding with up to N drafted tokens a step (PEFT's batched generate "
        "has none: transformers' prompt lookup takes one row at a time)",
    )
    ap.add_argument(
        "--rounds", type=int, default=1, help="run the two sides alternately this many times; medians are reported"
    )
    ap.add_argument("--table", default=None, help="(internal) where prompttune leaves its prefix table for PEFT")
    args = ap.parse_args()
    if not 1 <= args.rounds <= 10:
        ap.error("--rounds: give 1 to 10")
    if args.side != "both":
        print(json.dumps((run_prompttune if args.side == "prompttune" else run_peft)(args)))
        return
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-gen-") as tmp:
        args.table = str(Path(tmp) / "prefix.safetensors")
        for _ in range(args.rounds):  # alternately, so a slower or faster spell of the machine meets both sides
            rounds.append({side: run_side(args, side) for side in ("prompttune", "peft")})
    keys = ("train_examples_per_s", "gen_tokens_per_s", "train_peak_rss_mb")
    a, b = (
        {**rounds[-1][side], **{k: median([r[side][k] for r in rounds]) for k in keys}}
        for side in ("prompttune", "peft")
    )
    print(
        f"prefix tuning on E2E NLG; model {args.model or 'smollm2-135m-instruct'} ({args.dtype}); {args.steps} steps "
        f"x batch {args.batch_size} ({args.train_rows} rows, targets <= {args.max_target_tokens} tokens), "
        f"{args.virtual_tokens} virtual tokens, MLP {args.encoder_hidden}, lr {args.lr}; greedy generation of up to "
        f"{args.max_new_tokens} tokens for {args.gen_rows} inputs, batch {args.batch_size}, "
        f"{f'prompttune drafting {args.draft_tokens} tokens a step, ' if args.draft_tokens else ''}"
        f"{'the same prefix' if b.get('same_prefix') else 'each side its own prefix'}; threads {a['threads']}"
    )
    print(f"{'':26}{'prompttune':>12}{'PEFT':>12}{'ratio':>9}")
    for key, label in (
        ("train_examples_per_s", "train examples/s"),
        ("gen_tokens_per_s", "generation tokens/s"),
        ("train_peak_rss_mb", "training peak RSS (MB)"),
    ):
        ratio = a[key] / b[key] if b[key] else float("nan")
        print(f"{label:26}{a[key]:12.2f}{b[key]:12.2f}{ratio:8.2f}x")
    print(f"{'tokens generated':26}{a['gen_tokens']:12d}{b['gen_tokens']:12d}")
    if len(rounds) > 1:
        print(f"medians of {len(rounds)} rounds; each round's ratios (training, generation, peak RSS):")
        for i, r in enumerate(rounds, 1):
            ratios = ", ".join(f"{r['prompttune'][k] / r['peft'][k]:.2f}x" for k in keys)
            print(f"  round {i}: {ratios}")
    same = sum(a["outputs"].get(x) == t for x, t in b["outputs"].items())
    print(
        f"identical outputs: {same} of {len(b['outputs'])} inputs (greedy from the same prefix; eager vs SDPA "
        "attention can break near-ties)"
    )
    for r in (a, b):
        r["outputs"] = len(r["outputs"])
    print(
        json.dumps(
            {
                "prompttune": a,
                "peft": b,
                "rounds": [{s: r[s] | {"outputs": len(r[s]["outputs"])} for s in r} for r in rounds],
            }
        )
    )


def run_side(args, side: str) -> dict:
    """One side in its own process (its own peak RSS); its JSON result."""
    cmd = [sys.executable, __file__, "--side", side] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "side" and v is not None
    ]
    print(f"running {side} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{side} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
