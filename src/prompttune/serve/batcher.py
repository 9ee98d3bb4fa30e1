"""The scheduler: one bounded queue for every task's requests, one worker thread that runs the model.

A batch closes at ``max_batch`` rows or ``max_wait_ms`` after its first job, whichever comes first. Rows of
label-word tasks on one backbone go through ONE forward pass whatever their tasks (``mixed.score_mixed``, in
passes of at most ``max_batch`` rows and ``scorer.SCORE_TOKEN_BUDGET`` tokens), with them classification-head
tasks pooled at the last token (a decoder's; ``mixed.mixable_head``); an ATTEMPT mixture's rows (a prompt per
row: ``PromptModel.mixes`` false) are scored per task with ``PromptModel.score``; other head tasks' rows are
batched per task (``Task.predictions``); completions (kind "generate") of any tasks are decoded together in one
batched loop (``decode.decode``), after the batch's scoring, up to ``max_batch`` rows a loop. A job whose caller
gave up (timeout) is skipped.
Every forward pass holds its tasks' prefixes through the prefix cache (``prefix_cache.PrefixCache.use``);
a batch whose tasks' prefixes do not fit the cache's budget together is scored in groups that do.
Results are handed to the caller's event loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prompttune.core.errors import PromptTuneError
from prompttune.serve.prefix_cache import PrefixCache


class QueueFull(Exception):
    """The queue holds ``max_queue`` rows: answer 429 with Retry-After."""


@dataclass
class Job:
    """Work for one request: rows to score (labels, head), a completion to decode, or a ``call`` to run."""

    served: object  # a ServedTask
    kind: str  # "labels" | "head" | "generate" | "call"
    payload: object  # a Dataset (labels, head) | (values, GenerationConfig) (generate) | a callable (call)
    size: int  # rows counted against the batch and the queue
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    cancelled: bool = False

    def finish(self, result=None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the caller's loop is closed: nobody is waiting
            pass


SHARE_WAIT_MAX_S = 0.05  # the wait a share of the last batch's run time may add, at most (a long generation)


class Batcher:
    """One queue, one worker. ``submit`` from the event loop; ``stop`` drains what is queued, then ends."""

    def __init__(
        self,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        on_batch: Callable[[int, int], None] | None = None,
        cache: PrefixCache | None = None,
        max_wait_share: float = 0.15,
    ):
        self.cache = cache if cache is not None else PrefixCache()
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.max_wait_share = max_wait_share
        self.last_run_s = 0.0  # how long the last batch ran (the next one may wait a share of it)
        self.max_queue = max_queue
        self.on_batch = on_batch  # (rows, tasks) of each batch: metrics
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._rows = 0  # rows queued and not yet taken
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="prompttune-batcher", daemon=True)
        self._stopping = False

    def start(self) -> None:
        self._thread.start()

    @property
    def depth(self) -> int:
        """Rows waiting in the queue."""
        return self._rows

    def submit(self, served, kind: str, payload, size: int) -> Job:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if self._rows + size > self.max_queue:
                raise QueueFull(f"the queue holds {self._rows} rows; its limit is {self.max_queue} (--max-queue)")
            self._rows += size
        job = Job(served, kind, payload, size, loop, loop.create_future())
        self._queue.put(job)
        return job

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs, finish the queued ones, end the worker (bounded by ``timeout``)."""
        with self._lock:
            self._stopping = True
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the worker --------------------------------------------------------------------------------
    def _take(self) -> tuple[list[Job], bool]:
        """The next batch (blocks for its first job); True once the stop marker is reached."""
        first = self._queue.get()
        if first is None:
            return [], True
        jobs, rows = [first], first.size
        deadline = time.perf_counter() + self.wait_s()
        while rows < self.max_batch:
            left = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # seen again after this batch
                break
            jobs.append(job)
            rows += job.size
        with self._lock:
            self._rows -= rows
        return jobs, False

    def wait_s(self) -> float:
        """How long a batch waits for more rows after its first: ``max_wait_ms``, or a share of the last batch's
        run time where that is longer (at most ``SHARE_WAIT_MAX_S``). Clients answered together by one batch send
        their next requests together a few milliseconds later, while the next batch has already started on the
        rows that came meanwhile: with a fixed 5 ms the load split into two half-full batches that alternate (32
        clients: 18 rows a batch on average). Waiting a share of what a batch costs lets them join: the
        8-task server of ``benchmarks/bench_serve.py`` 66 -> 90 requests/s, one task 85 -> 117 (2 cores, 20 ms)."""
        return max(self.max_wait, min(SHARE_WAIT_MAX_S, self.max_wait_share * self.last_run_s))

    def _work(self) -> None:
        import torch

        from prompttune.core.heap import HeapTrim

        # batches of every shape (tasks' prefixes, rows' lengths, labels) leave glibc's heap holding freed blocks:
        # hand them back every few batches, and at once after a batch that grew it (as training does)
        heap = HeapTrim()
        with torch.no_grad():
            for batches in itertools.count(1):
                jobs, stop = self._take()
                if stop:
                    return
                live = [j for j in jobs if not j.cancelled]
                if live and self.on_batch:
                    self.on_batch(sum(j.size for j in live), len({id(j.served) for j in live}))
                # an error outside the per-request guards (a bug, a module that fails to import) fails this
                # batch's requests with a 500 and the worker goes on: a dead worker would leave every request
                # waiting for its timeout behind a server that still answers /healthz
                start = time.perf_counter()
                self._guard(live, lambda live=live: self._run(live))
                self.last_run_s = time.perf_counter() - start
                heap(batches)

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs (False before start and after stop)."""
        return self._thread.is_alive()

    def _run(self, jobs: list[Job]) -> None:
        from prompttune.serve.mixed import mixable_head

        mixed = [j for j in jobs if j.kind == "labels" or j.kind == "head" and mixable_head(j.served.task)]
        taken = {id(j) for j in mixed}
        if mixed:
            self._score_labels(mixed)
        heads: dict[int, list[Job]] = {}
        for j in jobs:
            if j.kind == "head" and id(j) not in taken:
                heads.setdefault(id(j.served), []).append(j)
        for group in heads.values():
            try:
                self._predict_head(group)
            except Exception:  # noqa: BLE001 - one bad request: each request alone, so the others still succeed
                for j in group:
                    self._guard([j], lambda j=j: self._predict_head([j]))
        gens = [j for j in jobs if j.kind == "generate" and not j.cancelled]
        if gens:
            self._generate(gens)
        for j in jobs:
            if j.kind == "call" and not j.cancelled:
                self._guard([j], lambda j=j: self._call(j))

    def _generate(self, jobs: list[Job]) -> None:
        """Completions decoded together: per backbone, in groups whose prefixes fit the cache, max_batch at a time."""
        by_backbone: dict[int, list[Job]] = {}
        for j in jobs:
            by_backbone.setdefault(id(j.served.backbone), []).append(j)
        for group in by_backbone.values():
            owners = list({id(j.served.prefix_owner): j.served.prefix_owner for j in group}.values())
            for part in self.cache.groups(owners):
                inside = {id(o) for o in part}
                mine = [j for j in group if id(j.served.prefix_owner) in inside]
                for s in range(0, len(mine), self.max_batch):
                    chunk = mine[s : s + self.max_batch]
                    self._guard(chunk, lambda chunk=chunk: self._decode(chunk))

    def _decode(self, jobs: list[Job]) -> None:
        from prompttune.serve.decode import decode, prepare

        with self.cache.use([j.served.prefix_owner for j in jobs]):
            rows, ready = [], []
            for j in jobs:  # a prompt that does not fit its task fails its own request only
                try:
                    row = prepare(j.served, *j.payload)
                except Exception as e:  # noqa: BLE001 - handed to this request, as _guard would
                    self._guard([j], lambda e=e: _raise(e))
                    continue
                row.stopped = lambda j=j: j.cancelled
                rows.append(row)
                ready.append(j)
            out = decode(jobs[0].served.backbone, rows) if rows else []
        for j, result in zip(ready, out, strict=True):
            if isinstance(result, BaseException):
                self._guard([j], lambda e=result: _raise(e))
            else:
                j.finish(result)

    def _call(self, job: Job) -> None:
        with self.cache.use([job.served.prefix_owner]):
            result = job.payload()
        job.finish(result)

    def _guard(self, jobs: list[Job], work: Callable[[], None]) -> None:
        """Run ``work``; an error fails these jobs only, and the worker goes on."""
        try:
            work()
        except PromptTuneError as e:
            for j in jobs:
                j.finish(error=e)
        except Exception as e:  # noqa: BLE001 - a bug must not stop the worker: the request gets a 500
            for j in jobs:
                j.finish(error=RuntimeError(f"{type(e).__name__}: {e}"))

    def _score_labels(self, jobs: list[Job]) -> None:
        from prompttune.scorer import Encoded
        from prompttune.serve.mixed import score_mixed

        encoded: dict[int, list[list[int]]] = {}
        for j in jobs:  # a row that does not fit its task fails its own request only
            self._guard([j], lambda j=j: encoded.__setitem__(id(j), self._encode(j)))
        by_backbone: dict[int, list[Job]] = {}
        for j in jobs:
            if id(j) in encoded:
                by_backbone.setdefault(id(j.served.backbone), []).append(j)
        for group in by_backbone.values():
            models = list({id(j.served.task.model): j.served.task.model for j in group}.values())
            scores: dict[int, list] = {id(j): [None] * j.size for j in group}

            def run(group=group, models=models, scores=scores) -> None:
                for model in [m for m in models if not m.mixes]:  # a prompt per row (ATTEMPT): its task alone
                    mine = [(j, k, ids) for j in group if j.served.task.model is model
                            for k, ids in enumerate(encoded[id(j)])]  # fmt: skip
                    with self.cache.use([model]):
                        out = model.score(Encoded([ids for _, _, ids in mine]), batch_size=self.max_batch)
                    for (j, k, _), o in zip(mine, out, strict=True):
                        scores[id(j)][k] = o
                models = [m for m in models if m.mixes]
                for part in self.cache.groups(models):  # tasks whose prefixes fit the budget together
                    inside = {id(m) for m in part}
                    items = [(j, k, ids) for j in group if id(j.served.task.model) in inside
                             for k, ids in enumerate(encoded[id(j)])]  # fmt: skip
                    items.sort(key=lambda x: len(x[2]))  # similar lengths together: less padding
                    for chunk in _passes(items, self.max_batch):
                        with self.cache.use([j.served.task.model for j, _, _ in chunk]):
                            out = score_mixed([(j.served.task.model, ids) for j, _, ids in chunk])
                        for (j, k, _), o in zip(chunk, out, strict=True):
                            scores[id(j)][k] = o
                for j in group:
                    j.finish(_head_outputs(j, scores[id(j)]) if j.kind == "head" else scores[id(j)])

            self._guard(group, run)

    @staticmethod
    def _encode(job: Job) -> list[list[int]]:
        from prompttune.core.data import check_fields

        model = job.served.task.model
        if job.kind == "head":  # a classification head's rows (mixed.mixable_head)
            return [job.served.task.head_kind.row_ids(model, row) for row in job.payload.rows]
        check_fields(job.payload, sorted(model.template.variables), need_label=False)
        return model.encode(job.payload).ids

    def _predict_head(self, jobs: list[Job]) -> None:
        from prompttune.core.data import Dataset

        task = jobs[0].served.task
        rows = [r for j in jobs for r in j.payload.rows]
        with self.cache.use([task.model]):
            out = task.predictions(Dataset(rows, "request"))
        start = 0
        for j in jobs:
            j.finish(out[start : start + j.size])
            start += j.size


def _raise(e: BaseException) -> None:
    raise e


def _head_outputs(job: Job, probs: list) -> list[dict]:
    """A classification head's answers as ``HeadTask.predictions`` gives them, from its probabilities."""
    labels = job.served.task.head_kind.labels
    out = []
    for row, p in zip(job.payload.rows, probs, strict=True):
        shown = row.fields.get("question") or row.fields.get("text") or " ".join(row.fields.get("tokens") or [])
        scores = dict(zip(labels, map(float, p), strict=True))
        out.append({"input": str(shown), "label": labels[int(p.argmax())], "scores": scores})
    return out


def _passes(items: list, max_rows: int) -> list[list]:
    """A batch's rows (sorted by length) in forward passes of at most ``max_rows`` rows and ``SCORE_TOKEN_BUDGET``
    tokens (rows x the longest; a longer row is a pass of its own), as the library scores at inference: rows of a
    few thousand tokens would otherwise hold 32 of them in one pass, with their attention masks."""
    from prompttune.batches import micro_batches
    from prompttune.scorer import SCORE_TOKEN_BUDGET

    out = []
    for s in range(0, len(items), max_rows):
        part = items[s : s + max_rows]
        lengths = [len(ids) for _, _, ids in part]
        out += [[part[i] for i in cut] for cut in micro_batches(list(range(len(part))), lengths, SCORE_TOKEN_BUDGET)]
    return out
