"""DSPy side by side (issue 15): the same program, data, metric and budget of model calls, through DSPy's
optimizers and prompttune's.

- program: one predict step ``text -> label``, the label one of the training rows' labels (DSPy: a ``Literal``
  output field; prompttune: the label set ``optimize`` makes of a free-text output the rows fill with a few values);
- data: SST-2, the first ``--train-rows`` rows of ``../shared/data/sst2/train.jsonl`` to bootstrap demos from, the
  next ``--val-rows`` to score candidates on, the file's last ``--heldout`` rows held out (read in place; copies go
  to a temporary folder only, never into the repository);
- metric: accuracy (the predicted label equals the row's);
- optimizers: DSPy's ``BootstrapFewShotWithRandomSearch`` against ``prompttune optimize --optimizer random-search``,
  DSPy's ``MIPROv2`` against ``--optimizer mipro``, with the same demo limits and candidate counts;
- budget: DSPy runs first and its model calls are counted; prompttune gets that many (``--max-model-calls``);
- model: DSPy's LM is pointed at ``prompttune serve``'s OpenAI-compatible endpoint (a generation task whose prompt
  is the request's conversation, started here on a free loopback port, greedy decoding); prompttune runs the same
  backbone in process (labels chosen by score over a cached prefix).

Reported per optimizer and side: validation score, held-out accuracy, optimize seconds, held-out seconds, model
calls; as a table and one JSON object (the last line of stdout; ``--out FILE`` writes it too). A benchmark, not a
test. DSPy is not a dependency of prompttune: ``.venv/bin/pip install -e '.[bench]'`` (or ``pip install dspy``).

DSPy runs with ``--threads`` (8) concurrent requests, which the server decodes in one batch; its optimizers'
bootstrapping is sequential in DSPy. A reply DSPy cannot parse (even after its JSON fallback, a second call)
scores 0, as in DSPy's own ``Evaluate``, instead of ending the run after DSPy's default of 10 such errors.

DSPy's adapter is its ``JSONAdapter`` (``--adapter json``): the server holds each reply to DSPy's output schema
(``response_format``), so every reply parses. Measured on 2026-12-05 with the defaults (the issue's sizes; 9.5
minutes for all four; docs/programs.md): DSPy 0.513 / 0.457 held-out, prompttune 0.526 / 0.774.

The run measured on 2026-12-02 with ``--adapter chat`` (the default model, 2 cores; about 27 minutes, 25 of them
DSPy's, at ~2.8 s a row; results in docs/programs.md):

    .venv/bin/python benchmarks/bench_vs_dspy.py --optimizers random-search --train-rows 20 --val-rows 50 \\
        --heldout 200 --candidates 1 --max-demos 2 --max-labeled 2 --max-tokens 32

With the chat adapter few of the default model's replies parse, so DSPy's bootstrapping (one row at a time) walks
through every training row looking for passing traces: from 200 rows one demo set took over 15 minutes, and
MIPROv2 builds a demo set per candidate. Then the issue's sizes (``--train-rows 200 --val-rows 100 --heldout 1000
--candidates 8 --trials 12 --instructions 4``) take several hours on such a machine (with the JSON adapter: 9.5 min).

Smoke run (a tiny random model: both sides run end to end; the accuracies mean nothing):

    .venv/bin/python benchmarks/bench_vs_dspy.py --model /tmp/tiny --train-rows 6 --val-rows 4 --heldout 4 \\
        --candidates 1 --trials 2 --instructions 1 --minibatch 2 --max-demos 1 --max-tokens 8
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sst2" / "train.jsonl"
PAIRS = {"random-search": "BootstrapFewShotWithRandomSearch", "mipro": "MIPROv2"}
FALLBACK_CALLS = 2000  # prompttune's budget when DSPy's run failed (and no --budget-calls)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA, help="labelled rows (.jsonl with text, label)")
    p.add_argument("--model", default=None, help="backbone (default: prompttune's default decoder)")
    p.add_argument("--train-rows", type=int, default=200, help="rows from the file's start to draw demos from")
    p.add_argument("--val-rows", type=int, default=100, help="the rows after them: candidates are scored on these")
    p.add_argument("--heldout", type=int, default=1000, help="the file's last rows: the held-out accuracy")
    p.add_argument("--optimizers", default="random-search,mipro", help=f"of {', '.join(PAIRS)}")
    p.add_argument("--candidates", type=int, default=8, help="random search: bootstrapped demo sets (DSPy's count)")
    p.add_argument("--trials", type=int, default=12, help="mipro: trials (instruction x demo set) on minibatches")
    p.add_argument("--instructions", type=int, default=4, help="mipro: instruction (and demo set) candidates")
    p.add_argument("--minibatch", type=int, default=25, help="mipro: validation rows per trial")
    p.add_argument("--max-demos", type=int, default=4, help="bootstrapped demos at most")
    p.add_argument("--max-labeled", type=int, default=4, help="training rows as demos at most")
    p.add_argument("--max-tokens", type=int, default=64, help="DSPy's completions: tokens at most")
    p.add_argument(
        "--proposer-max-tokens", type=int, default=512,
        help="MIPROv2's proposer (data summary, instructions): tokens at most per completion",
    )  # fmt: skip
    p.add_argument("--budget-calls", type=int, default=None, help="prompttune's model calls (default: DSPy's)")
    p.add_argument(
        "--adapter", choices=("json", "chat"), default="json",
        help="DSPy's adapter: json (JSONAdapter; the server holds each reply to DSPy's output schema through "
        "response_format) or chat (ChatAdapter's [[ ## field ## ]] sections, free text; DSPy's JSON fallback)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=8,
        help="DSPy's num_threads (optimizers and scoring): concurrent requests, which the server batches",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="also write the JSON object here")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    bad = [n for n in names if n not in PAIRS]
    if bad or not names:
        p.error(f"--optimizers {args.optimizers}: give some of {', '.join(PAIRS)}")
    args.optimizer_list = names
    for flag in ("train_rows", "val_rows", "heldout", "candidates", "trials", "instructions", "minibatch", "threads"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def read_split(args) -> tuple[list[dict], list[dict], list[dict]]:
    with args.data.open() as f:
        rows = [json.loads(line) for line in f if line.strip()]
    need = args.train_rows + args.val_rows + args.heldout
    if need > len(rows):
        sys.exit(f"--train-rows + --val-rows + --heldout = {need}: {args.data} has {len(rows)} rows.")
    rows = [{"text": str(r["text"]), "label": str(r["label"])} for r in rows]
    train = rows[: args.train_rows]
    return train, rows[args.train_rows : args.train_rows + args.val_rows], rows[-args.heldout :]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "prompttune", *args]


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


# --- DSPy, through prompttune serve ---------------------------------------------------------------
class Server:
    """``prompttune serve lm=<a pass-through generation template>`` on a free loopback port, for the run."""

    def __init__(self, tmp: Path, model: str | None, max_tokens: int):
        template = tmp / "passthrough.yaml"
        template.write_text(
            'description: the request\'s conversation, its last user message as the user turn\nuser: "{{ text }}"\n'
        )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        model_flag = ["--model", model] if model else []
        limits = ["--max-input-chars", "200000", "--max-body-bytes", "4000000", "--timeout", "3600"]
        tokens = str(max(max_tokens, 16))
        cmd = cli("serve", f"lm={template}", "--port", str(self.port), "--max-tokens", tokens, *limits, *model_flag)
        self.log = (tmp / "serve.log").open("w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def wait(self, timeout: float = 900) -> None:
        import httpx

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                sys.exit(f"prompttune serve ended with code {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url.replace("/v1", "/healthz"), timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        sys.exit(f"prompttune serve did not answer within {timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def dspy_side(name: str, args, server: Server, labels: list[str], train, val, held) -> dict:
    import threading

    import dspy

    lock = threading.Lock()

    class CountingLM(dspy.LM):
        calls = 0

        def forward(self, *a, **kw):
            with lock:  # DSPy's threads call it concurrently
                CountingLM.calls += 1
            return super().forward(*a, **kw)

        # prompttune serve takes OpenAI's response_format with a JSON schema (structured output); DSPy cannot
        # look a local model up in LiteLLM's catalogue, so the benchmark says so (``--adapter json``)
        @property
        def supports_response_schema(self) -> bool:
            return args.adapter == "json"

        @property
        def supported_params(self) -> set[str]:
            return set(super().supported_params) | ({"response_format"} if args.adapter == "json" else set())

    def counting_lm(max_tokens: int) -> CountingLM:
        return CountingLM("openai/lm", api_base=server.url, api_key="local", model_type="chat", temperature=0.0,
                          max_tokens=max_tokens, cache=False, num_retries=0)  # fmt: skip

    lm = counting_lm(args.max_tokens)
    # a reply DSPy cannot parse scores 0 (its failure_score) instead of ending the run after 10 (its default)
    adapter = dspy.JSONAdapter() if args.adapter == "json" else dspy.ChatAdapter()
    dspy.configure(lm=lm, adapter=adapter, max_errors=10**6)
    sig = dspy.Signature(
        {"text": (str, dspy.InputField()), "label": (typing.Literal[tuple(labels)], dspy.OutputField())},
        "Given the fields `text`, produce the fields `label`.",
    )
    program = dspy.Predict(sig)

    def metric(example, pred, trace=None) -> bool:
        return str(getattr(pred, "label", "")).strip() == example.label

    def examples(rows):
        return [dspy.Example(text=r["text"], label=r["label"]).with_inputs("text") for r in rows]

    trainset, valset = examples(train), examples(val)
    t0 = time.perf_counter()
    try:
        best = compile_dspy(dspy, name, args, program, metric, trainset, valset, counting_lm(args.proposer_max_tokens))
    except Exception as e:  # noqa: BLE001 - DSPy's failure is a result (e.g. a proposal it cannot parse)
        seconds = time.perf_counter() - t0
        print(f"DSPy {PAIRS[name]} failed after {CountingLM.calls} model calls: {e}", file=sys.stderr)
        error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        return {"optimizer": PAIRS[name], "error": error, "val_score": None,
                "heldout_accuracy": None, "optimize_seconds": seconds, "heldout_seconds": None,
                "model_calls": CountingLM.calls}  # fmt: skip
    seconds, calls = time.perf_counter() - t0, CountingLM.calls
    val_score = score_dspy(dspy, best, valset, metric, args.threads)
    t1 = time.perf_counter()
    held_acc = score_dspy(dspy, best, examples(held), metric, args.threads)
    return {
        "optimizer": PAIRS[name],
        "val_score": val_score,
        "heldout_accuracy": held_acc,
        "optimize_seconds": seconds,
        "heldout_seconds": time.perf_counter() - t1,
        "model_calls": calls,
        "demos": len(best.demos),
    }


def compile_dspy(dspy, name: str, args, program, metric, trainset, valset, proposer):
    """DSPy's optimizer of the pair, with the benchmark's demo limits and candidate counts. MIPROv2's proposer
    (its dataset summary and instructions) is the same model with room for longer replies (``proposer``): at the
    task's ``--max-tokens`` its replies are cut short and cannot parse."""
    if name == "random-search":
        opt = dspy.BootstrapFewShotWithRandomSearch(
            metric=metric, max_bootstrapped_demos=args.max_demos, max_labeled_demos=args.max_labeled,
            num_candidate_programs=args.candidates, num_threads=args.threads,
        )  # fmt: skip
        return opt.compile(program, trainset=trainset, valset=valset)
    else:
        opt = dspy.MIPROv2(
            metric=metric, prompt_model=proposer, auto=None, num_candidates=args.instructions,
            max_bootstrapped_demos=args.max_demos,
            max_labeled_demos=args.max_labeled, num_threads=args.threads, seed=args.seed, verbose=False,
        )  # fmt: skip
        return opt.compile(
            program, trainset=trainset, valset=valset, num_trials=args.trials,
            minibatch=args.minibatch < len(valset), minibatch_size=min(args.minibatch, len(valset)),
        )  # fmt: skip


def score_dspy(dspy, program, rows, metric, threads: int) -> float:
    """Accuracy through DSPy's own ``Evaluate`` (a reply it cannot parse counts as wrong)."""
    evaluate = dspy.Evaluate(
        devset=rows, metric=metric, num_threads=threads, display_progress=False, max_errors=len(rows)
    )
    return evaluate(program).score / 100


# --- prompttune, in process -----------------------------------------------------------------------
def prompttune_side(name: str, args, budget: int, files: dict[str, Path], tmp: Path) -> dict:
    out = tmp / f"ours-{name}"
    model_flag = ["--model", args.model] if args.model else []
    candidates = args.candidates + 2 if name == "random-search" else args.trials  # + as-given and labeled
    cmd = cli("optimize", "text -> label", "--train", str(files["train"]), "--val", str(files["val"]),
              "--optimizer", name, "--out", str(out), "--max-model-calls", str(budget),
              "--max-candidates", str(candidates), "--max-demos", str(args.max_demos),
              "--max-labeled-demos", str(args.max_labeled), "--num-instructions", str(args.instructions),
              "--minibatch-size", str(args.minibatch), "--seed", str(args.seed), "--json", *model_flag)  # fmt: skip
    t0 = time.perf_counter()
    found = last_json(run(cmd))
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    held = last_json(run(cli("run", str(out), str(files["heldout"]), "--json", *model_flag)))
    return {
        "optimizer": name,
        "val_score": found["best_val_score"],
        "heldout_accuracy": held["score"],
        "optimize_seconds": seconds,  # the process: loading the model included
        "search_seconds": found["seconds"],
        "heldout_seconds": time.perf_counter() - t1,
        "model_calls": found["model_calls"],
        "candidates_evaluated": found["candidates_evaluated"],
        "stopped": found["stopped"],
    }


def run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[2:5])} ... failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def table(results: list[dict]) -> str:
    lines = [
        "| optimizer | side | validation | held-out accuracy | optimize s | held-out s | model calls |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for side in ("dspy", "prompttune"):
            x = r[side]
            if x.get("error"):
                lines.append(f"| {r['optimizer']} | {side} ({x['optimizer']}) | failed: {x['error'][:80]} | | "
                             f"{x['optimize_seconds']:.0f} | | {x['model_calls']:,} |")  # fmt: skip
                continue
            lines.append(
                f"| {r['optimizer']} | {side} ({x['optimizer']}) | {x['val_score']:.3f} | {x['heldout_accuracy']:.3f} "
                f"| {x['optimize_seconds']:.0f} | {x['heldout_seconds']:.0f} | {x['model_calls']:,} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    train, val, held = read_split(args)
    labels = sorted({r["label"] for r in train})
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-dspy-") as tmp_name:
        tmp = Path(tmp_name)
        files = {k: write_jsonl(tmp / f"{k}.jsonl", v) for k, v in (("train", train), ("val", val), ("heldout", held))}
        server = Server(tmp, args.model, max(args.max_tokens, args.proposer_max_tokens))
        try:
            server.wait()
            dspy_results = {n: dspy_side(n, args, server, labels, train, val, held) for n in args.optimizer_list}
        finally:
            server.stop()  # before prompttune's side: the two never share the CPU
        for name in args.optimizer_list:
            dspy_done = dspy_results[name]
            budget = args.budget_calls or (FALLBACK_CALLS if dspy_done.get("error") else dspy_done["model_calls"])
            ours = prompttune_side(name, args, budget, files, tmp)
            results.append({"optimizer": name, "budget_model_calls": budget, "dspy": dspy_done, "prompttune": ours})
    payload = {
        "data": str(args.data),
        "model": args.model or "smollm2 (default)",
        "rows": {"train": len(train), "val": len(val), "heldout": len(held)},
        "labels": labels,
        "settings": {k: v for k, v in vars(args).items() if k not in ("data", "out", "optimizer_list")},
        "results": results,
    }
    print(table(results))
    text = json.dumps(payload, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
