"""Parts of ``bench_serve.py``: server subprocesses on free loopback ports, the HTTP load, and the two baselines
(one ``prompttune predict`` process per request; one PEFT ``PeftModel`` per task serving requests one by one).

Run alone only as the PEFT worker (``bench_serve.py`` starts it, so its memory is its own):

    python benchmarks/bench_serve_parts.py --peft-worker PLAN.json
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

TEXTS = ["a gripping, funny film", "dull and far too long", "the best thing I saw this year", "not worth it"]
BIN = Path(sys.executable).parent / "prompttune"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int | str = "self") -> float:
    """A process's resident memory now (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def quantiles(latencies: list[float]) -> tuple[float, float]:
    """(p50, p99) in ms."""
    if len(latencies) < 2:
        v = latencies[0] * 1000 if latencies else float("nan")
        return v, v
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return q[49] * 1000, q[98] * 1000


class Server:
    """``prompttune serve TASK ... --port P`` as a subprocess, healthy on entry, SIGTERM-stopped on exit."""

    def __init__(self, tasks: list[str], labels: dict[str, str], model: str | None, extra: list[str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [str(BIN), "serve", *tasks, "--host", "127.0.0.1", "--port", str(self.port)]
        self.cmd += ["--max-queue", "100000", "--timeout", "600", *extra]
        for name, words in labels.items():
            self.cmd += ["--labels", f"{name}={words}"]
        if model:
            self.cmd += ["--model", model]
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.load_s = 0.0

    def __enter__(self) -> Server:
        t0 = time.perf_counter()
        self.out = self.log.open("wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 1800  # 1,000 tasks load in minutes on a busy machine
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    self.load_s = time.perf_counter() - t0
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("the server did not become healthy within 1800 s")

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.out.close()


def load(url: str, names: list[str], requests: int, clients: int, seed: int = 0) -> dict:
    """``requests`` predict requests of 1 row each, a uniformly random task each, from ``clients`` threads."""
    rng = random.Random(seed)
    plan = [(rng.choice(names), rng.choice(TEXTS)) for _ in range(requests)]
    latencies: list[float] = []
    errors, first_error = 0, []

    def one(c: httpx.Client, task: str, text: str) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            r = c.post(f"/v1/tasks/{task}/predict", json={"inputs": [text]})
            ok, why = r.status_code == 200, r.text[:300]
        except httpx.HTTPError as e:
            ok, why = False, repr(e)
        latencies.append(time.perf_counter() - t0)
        if not ok:
            errors += 1
            first_error.append(why)

    with httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients)) as c:
        warm = [(names[i % len(names)], TEXTS[0]) for i in range(min(len(names), 64))]
        warm += [(rng.choice(names), TEXTS[1]) for _ in range(2 * clients)]
        with ThreadPoolExecutor(clients) as pool:  # warm-up: each task once, then a concurrent burst
            list(pool.map(lambda p: one(c, *p), warm))
        latencies.clear()
        errors = 0
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda p: one(c, *p), plan))
        seconds = time.perf_counter() - t0
    p50, p99 = quantiles(latencies)
    return {"req_per_s": requests / seconds, "p50_ms": p50, "p99_ms": p99, "errors": errors, "requests": requests,
            "seconds": seconds, "first_error": first_error[:1]}  # fmt: skip


def predict_processes(artifacts: list[Path], requests: int, model: str | None, seed: int = 0) -> dict:
    """The status quo: one ``prompttune predict ARTIFACT TEXT`` process per request, one after another."""
    rng = random.Random(seed)
    latencies, errors, first_error = [], 0, []
    for _ in range(requests):
        cmd = [str(BIN), "predict", str(rng.choice(artifacts)), rng.choice(TEXTS), "--json"]
        if model:
            cmd += ["--model", model]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        latencies.append(time.perf_counter() - t0)
        if r.returncode != 0:
            errors += 1
            first_error.append(r.stderr[-300:])
    seconds = sum(latencies)
    p50, p99 = quantiles(latencies)
    return {"req_per_s": requests / seconds, "p50_ms": p50, "p99_ms": p99, "errors": errors, "requests": requests,
            "seconds": seconds, "first_error": first_error[:1]}  # fmt: skip


def peft_baseline(plan_path: Path) -> dict:
    """The PEFT worker in its own process; its JSON result (with its resident memory)."""
    r = subprocess.run([sys.executable, __file__, "--peft-worker", str(plan_path)], capture_output=True, text=True,
                       timeout=7200)  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"the PEFT worker failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _peft_worker(plan_path: Path) -> dict:
    """One PeftModel per soft-prompt task (from its exported adapter) over one base model; hard prompts on the
    base model; every request alone: the full prompt's tokens in one forward, label words read at the end."""
    import torch
    from peft import PeftModel

    from prompttune import Backbone
    from prompttune.core.backbone import set_threads

    set_threads()
    plan = json.loads(plan_path.read_text())
    base = Backbone.load(plan["model"]).model  # the same weights as the server's
    base.eval()
    models = {}
    for name, task in plan["tasks"].items():
        models[name] = PeftModel.from_pretrained(base, task["adapter"]).eval() if task["adapter"] else base
    latencies, errors = [], 0
    with torch.inference_mode():
        for name, ids in plan["requests"][:4]:  # warm-up
            models[name](input_ids=torch.tensor([ids]))
        t0 = time.perf_counter()
        for name, ids in plan["requests"]:
            s = time.perf_counter()
            logits = models[name](input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids))).logits
            label = int(logits[0, -1, plan["tasks"][name]["label_ids"]].argmax())
            latencies.append(time.perf_counter() - s)
            errors += not 0 <= label < len(plan["tasks"][name]["label_ids"])
        seconds = time.perf_counter() - t0
    p50, p99 = quantiles(latencies)
    n = len(plan["requests"])
    return {"req_per_s": n / seconds, "p50_ms": p50, "p99_ms": p99, "errors": errors, "requests": n,
            "seconds": seconds, "rss_mb": rss_mb(), "tasks": sorted(models)}  # fmt: skip


def machine_load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--peft-worker":
        print(json.dumps(_peft_worker(Path(sys.argv[2]))))
    else:
        raise SystemExit(__doc__)
