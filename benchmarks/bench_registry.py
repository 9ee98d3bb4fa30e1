"""Prompt registry throughput on SQLite (the default) and PostgreSQL (a real server, fsync on).

    .venv/bin/python benchmarks/bench_registry.py [--versions 10000] [--writers 4] [--per-writer 250]

1. adds N template versions (100 prompts x N/100 versions, one transaction each), then lists them all;
2. W processes each add K versions to the same prompt at once; checks that none is lost or duplicated
   (version numbers exactly 1..W*K, every content present).
PostgreSQL is started from the Debian package with scripts/postgres.sh (PG_FSYNC=on: durable commits,
like SQLite's default). Prints the timings side by side, with PostgreSQL / SQLite ratios.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from prompttune.core.template import Template
from prompttune.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


def spec(i: int) -> dict:
    return Template(user=f"Variant {i}: {{{{ text }}}}", system="Classify the text.").to_dict()


def bulk(db: str, n: int) -> dict:
    reg = Registry(db)
    t0 = time.perf_counter()
    for i in range(n):
        reg.add(f"prompt-{i % 100:03d}", "template", spec(i), provenance={"author": "bench"})
    add_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    listed = reg.versions()
    list_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    names = reg.names()
    names_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = reg.get(f"prompt-042@v{max(1, n // 200)}")
    get_s = time.perf_counter() - t0
    assert len(listed) == n and len(names) == min(n, 100) and got.number == max(1, n // 200)
    reg.close()
    return {"add_s": add_s, "list_s": list_s, "names_s": names_s, "get_ms": get_s * 1000}


def _writer(db: str, worker: int, count: int, start) -> None:
    reg = Registry(db)
    start.wait()
    for i in range(count):
        reg.add("shared", "template", spec(100_000 + worker * count + i), provenance={"worker": worker})
    reg.close()


def concurrent(db: str, writers: int, per_writer: int) -> dict:
    Registry(db).close()  # tables exist before the writers start
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(writers + 1)
    procs = [ctx.Process(target=_writer, args=(db, w, per_writer, start)) for w in range(writers)]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.perf_counter()
    for p in procs:
        p.join()
    seconds = time.perf_counter() - t0
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    versions = Registry(db).versions("shared")
    numbers = [v.number for v in versions]
    expected = {spec(100_000 + i)["user"] for i in range(writers * per_writer)}
    lost = len(expected - {v.content["user"] for v in versions})
    assert numbers == list(range(1, writers * per_writer + 1)), "version numbers are not exactly 1..N"
    return {"seconds": seconds, "versions": len(versions), "lost": lost}


def start_postgres(folder: str) -> str:
    env = {**os.environ, "PG_FSYNC": "on"}
    script = str(ROOT / "scripts" / "postgres.sh")
    subprocess.run(["bash", script, "install"], check=True, env=env)
    proc = subprocess.run(["bash", script, "start", folder], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"PostgreSQL did not start: {proc.stderr}")
    return proc.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", type=int, default=10_000)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--per-writer", type=int, default=250)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="prompttune-bench-registry-")
    pg_dir = tempfile.mkdtemp(prefix="prompttune-bench-pg-")
    results = {}
    try:
        url = start_postgres(pg_dir)
        import sqlalchemy as sa

        admin = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql("CREATE DATABASE bulk")
            conn.exec_driver_sql("CREATE DATABASE conc")
        admin.dispose()
        base = url.rsplit("/", 1)[0]
        targets = {
            "SQLite": (f"{work}/bulk.db", f"{work}/conc.db"),
            "PostgreSQL": (f"{base}/bulk", f"{base}/conc"),
        }
        for name, (bulk_db, conc_db) in targets.items():
            print(f"{name}: adding {args.versions:,} versions ...", flush=True)
            results[name] = {"bulk": bulk(bulk_db, args.versions)}
            print(f"{name}: {args.writers} writers x {args.per_writer} adds at once ...", flush=True)
            results[name]["conc"] = concurrent(conc_db, args.writers, args.per_writer)
    finally:
        subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "stop", pg_dir], capture_output=True)
        shutil.rmtree(pg_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    s, p = results["SQLite"], results["PostgreSQL"]
    n, total = args.versions, args.writers * args.per_writer
    rows = [
        (f"add {n:,} versions (s)", s["bulk"]["add_s"], p["bulk"]["add_s"]),
        ("  adds per second", n / s["bulk"]["add_s"], n / p["bulk"]["add_s"]),
        (f"list {n:,} versions (s)", s["bulk"]["list_s"], p["bulk"]["list_s"]),
        ("list 100 prompts + labels (s)", s["bulk"]["names_s"], p["bulk"]["names_s"]),
        ("get one version (ms)", s["bulk"]["get_ms"], p["bulk"]["get_ms"]),
        (f"{args.writers} writers x {args.per_writer} adds (s)", s["conc"]["seconds"], p["conc"]["seconds"]),
        ("  adds per second", total / s["conc"]["seconds"], total / p["conc"]["seconds"]),
        ("  versions stored / lost", f"{s['conc']['versions']} / {s['conc']['lost']}", ""),
    ]
    print(f"\n{'':38}{'SQLite':>12}{'PostgreSQL':>12}{'PG/SQLite':>11}")
    for label, a, b in rows:
        if isinstance(a, str):
            print(f"{label:38}{a:>12}{p['conc']['versions']:>7} / {p['conc']['lost']:<4}")
            continue
        print(f"{label:38}{a:12.3f}{b:12.3f}{b / a:10.2f}x")


if __name__ == "__main__":
    main()
