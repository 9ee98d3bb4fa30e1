"""Where a comparison's cells run: ``local`` (this machine, one process per cell: ``runner.run_cells``) or ``ray``
(each cell a Ray task with its CPU/GPU request, on a local Ray instance or the cluster at ``--ray-address``).

Either way a cell's record lands in the same ``OUT/cells/`` store under the same key (``runner.store``), so a
comparison resumes, and its reports read, the same whichever executor ran which cell. On a cluster every node
must see DATA (and --test/--val) at the same path, and a Python environment with prompttune installed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from prompttune.compare.cell import failure
from prompttune.compare.runner import Cell, load_done, run_cells, store
from prompttune.core.errors import PromptTuneError

EXECUTORS = ("local", "ray")
MAX_CELL_CPUS = 1024  # a cell's CPU request, at most
MAX_CELL_GPUS = 64


def check(executor: str, ray_address: str | None, cpus: float, gpus: float) -> None:
    """Every executor flag checked before anything runs; errors name the flag."""
    if executor not in EXECUTORS:
        raise PromptTuneError(f"--executor {executor}: choose {' or '.join(EXECUTORS)}.")
    if ray_address is not None and executor != "ray":
        raise PromptTuneError("--ray-address: only with --executor ray.")
    if not 0 < cpus <= MAX_CELL_CPUS:
        raise PromptTuneError(f"--cell-cpus {cpus}: must be above 0 and at most {MAX_CELL_CPUS}.")
    if not 0 <= gpus <= MAX_CELL_GPUS:
        raise PromptTuneError(f"--cell-gpus {gpus}: must be between 0 and {MAX_CELL_GPUS}.")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise PromptTuneError(
                "--executor ray: Ray is not installed; pip install 'prompttune[ray]' (or pip install ray)."
            ) from None


def run(
    executor: str,
    cells: list[Cell],
    settings: dict,
    fingerprint: str,
    out: Path,
    isolate: bool = True,
    on_event: Callable[[Cell, dict], None] = lambda cell, ev: None,
    ray_address: str | None = None,
    cpus: float = 1,
    gpus: float = 0,
) -> tuple[list[dict], int]:
    """(every cell's record in plan order, how many ran now), whichever executor runs them."""
    check(executor, ray_address, cpus, gpus)
    if executor == "local":
        return run_cells(cells, settings, fingerprint, out, isolate, on_event)
    return run_cells_ray(cells, settings, fingerprint, out, on_event, ray_address, cpus, gpus)


def ray_cell(spec: dict) -> dict:
    """One cell in a Ray worker (a fresh process per cell: its peak memory is its own, as with --isolate)."""
    import resource

    from prompttune.compare.cell import run_cell

    try:
        record = run_cell(spec)
    except Exception as e:  # noqa: BLE001 - a failing arm must not stop the others
        record = failure(e)
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record["isolated"] = True
    try:
        import ray

        record["node"] = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - only a label in the record
        pass
    return record


def run_cells_ray(
    cells: list[Cell],
    settings: dict,
    fingerprint: str,
    out: Path,
    on_event: Callable[[Cell, dict], None],
    address: str | None,
    cpus: float,
    gpus: float,
) -> tuple[list[dict], int]:
    """Every unfinished cell submitted at once as a Ray task; each record stored as it lands."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:  # a Ray instance set up by the caller (e.g. ray.init(num_cpus=2)) is used as it is
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"--ray-address {address}" if address else "a local Ray instance"
            raise PromptTuneError(f"--executor ray: could not start or reach {where} ({e}).") from e
    remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_calls=1)(ray_cell)
    records: list[dict | None] = [None] * len(cells)
    pending: dict = {}
    try:
        for i, cell in enumerate(cells):
            key = cell.key(settings, fingerprint)
            done = load_done(out, key)
            if done is not None:
                records[i] = done
                on_event(cell, {"event": "reused", "record": done})
            else:  # no per-cell "start": the cells run side by side, each reported as it lands
                pending[remote.remote(cell.spec(settings))] = (i, cell, key)
        ran = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i, cell, key = pending.pop(ref)
                try:
                    record = ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker died (memory, a lost node): a failed cell
                    record = {"status": "failed", "error": f"Ray task failed: {str(e).strip().splitlines()[0]}"}
                    record |= {"isolated": True}
                records[i] = store(out, cell, key, record)
                ran += 1
                on_event(cell, {"event": "done", "record": records[i]})
    finally:
        for ref in pending:  # interrupted: finished cells are stored, the rest cancelled
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
    return records, ran  # type: ignore[return-value]
