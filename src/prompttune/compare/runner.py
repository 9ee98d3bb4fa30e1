"""Plan the cells of a comparison, run the ones not done yet, and keep each result as it lands.

A cell is (arm, seed, training-set size). Its result is stored atomically in ``OUT/cells/`` under a key
that hashes everything it depends on (arm and settings, seed, size, the data's fingerprint, the
harness settings), so rerunning the same command skips finished cells and changing anything reruns
only what it touches. Failed cells are stored too (the report shows them) and retried on the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prompttune.compare.arms import Arm
from prompttune.compare.cell import failure, run_cell
from prompttune.core import atomic

CELL_VERSION = 1  # bump when a cell's meaning changes, so old results are not reused


@dataclass
class Cell:
    arm: Arm
    seed: int | None  # None: the arm's result does not depend on it
    train_size: int | None

    def spec(self, settings: dict) -> dict:
        return {"arm": self.arm.to_dict(), "seed": self.seed, "train_size": self.train_size, "settings": settings}

    def key(self, settings: dict, fingerprint: str) -> str:
        payload = {**self.spec(settings), "data": fingerprint, "version": CELL_VERSION}
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]
        seed = "any" if self.seed is None else self.seed
        size = "any" if self.train_size is None else self.train_size
        return f"{self.arm.name}-seed{seed}-n{size}-{digest}"

    @property
    def label(self) -> str:
        parts = [self.arm.name]
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        if self.train_size is not None:
            parts.append(f"{self.train_size} rows")
        return ", ".join(parts)


def plan(arms: list[Arm], seeds: list[int], sizes: list[int | None]) -> list[Cell]:
    """Every (arm, seed, size); arms that ignore data get one cell that stands for all of them."""
    cells = []
    for arm in arms:
        if not arm.uses_data:
            cells.append(Cell(arm, None, None))
            continue
        cells += [Cell(arm, seed, size) for size in sizes for seed in seeds]
    return cells


def cell_path(out: Path, key: str) -> Path:
    return out / "cells" / f"{key}.json"


def load_done(out: Path, key: str) -> dict | None:
    path = cell_path(out, key)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return record if record.get("status") == "ok" else None


def run_cells(
    cells: list[Cell],
    settings: dict,
    fingerprint: str,
    out: Path,
    isolate: bool = True,
    on_event: Callable[[Cell, dict], None] = lambda cell, ev: None,
) -> tuple[list[dict], int]:
    """(every cell's record, how many ran now); finished cells are read back, not rerun."""
    records, ran = [], 0
    for cell in cells:
        key = cell.key(settings, fingerprint)
        record = load_done(out, key)
        if record is None:
            on_event(cell, {"event": "start"})
            record = (
                _run_isolated(cell, settings, out, key, on_event) if isolate else _run_here(cell, settings, on_event)
            )
            record = store(out, cell, key, record)
            ran += 1
            on_event(cell, {"event": "done", "record": record})
        else:
            on_event(cell, {"event": "reused", "record": record})
        records.append(record)
    return records, ran


def store(out: Path, cell: Cell, key: str, record: dict) -> dict:
    """A cell's record with what it was and when it finished, written atomically to ``OUT/cells/`` (any executor)."""
    record |= {"key": key, "arm": cell.arm.to_dict(), "seed": cell.seed, "train_size": cell.train_size}
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic.write_json(cell_path(out, key), record)
    return record


def _run_here(cell: Cell, settings: dict, on_event) -> dict:
    import resource

    try:
        record = run_cell(cell.spec(settings), lambda ev: on_event(cell, ev))
    except Exception as e:  # noqa: BLE001 - a failing arm must not stop the others
        record = failure(e)
    # in-process: the whole process's peak so far, an upper bound for this cell
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record["isolated"] = False
    return record


def _run_isolated(cell: Cell, settings: dict, out: Path, key: str, on_event) -> dict:
    """The cell in a child process: its peak RSS comes from wait4, its stderr goes to OUT/logs/."""
    log = out / "logs" / f"{key}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cell-", dir=out) as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(cell.spec(settings)))
        with log.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "prompttune.compare.cell_process", str(spec_path), str(result_path)],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
            try:
                for line in proc.stdout:
                    try:
                        on_event(cell, json.loads(line))
                    except json.JSONDecodeError:
                        pass  # stray prints from libraries
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        if result_path.exists():
            record = json.loads(result_path.read_text())
        else:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            record = {"status": "failed", "error": f"the cell's process ended with code {proc.returncode}: {tail[0]}"}
    record["peak_rss_mb"] = usage.ru_maxrss / 1024  # this child's own peak (kB on Linux)
    record["isolated"] = True
    if record.get("status") != "ok":
        record["log"] = str(log)
    return record
