"""Running the app on uvicorn: in the foreground (``prompttune serve``) or in a thread (tests, benchmarks).

uvicorn handles SIGINT/SIGTERM: it stops accepting connections, lets in-flight requests finish (up to
``graceful_s``), then the app's lifespan drains the batcher's queue and the process exits. After that drain
uvicorn raises the signal again for the previous handler; for SIGTERM that handler is ours and does nothing,
so a drained server exits 0 (a supervisor sees a clean stop, not a kill).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from prompttune.core.errors import PromptTuneError
from prompttune.serve.config import ServeConfig
from prompttune.serve.tasks import TaskTable, check_name, parse_labels, parse_task_spec


def build_table(
    config: ServeConfig,
    tasks: Sequence[str] = (),
    labels: dict[str, str | list[str]] | None = None,
    verbalizers: dict[str, str] | None = None,
    on_load: Callable[[str, str], None] | None = None,
) -> TaskTable:
    """A task table holding the TASK arguments (NAME=SOURCE), each loaded once; errors name the TASK.

    ``labels``: NAME -> "a,b" or [a, b] (--labels); ``verbalizers``: NAME -> label words spec (--verbalizer).
    """
    specs = [parse_task_spec(t) for t in tasks]
    names = [n for n, _ in specs]
    for name in sorted({n for n in names if names.count(n) > 1}):
        raise PromptTuneError(f"TASK {name}: the name is given twice; give each task its own name.")
    for flag, given in (("--labels", labels or {}), ("--verbalizer", verbalizers or {})):
        for name in given:
            if name not in names:
                raise PromptTuneError(f"{flag} {name}=...: no TASK named {name!r} (the tasks: {', '.join(names)}).")
    label_lists = {
        name: parse_labels(v if isinstance(v, str) else ",".join(v), f"--labels {name}=")
        for name, v in (labels or {}).items()
    }
    table = TaskTable(
        config.model,
        config.registry,
        config.dtype,
        config.device,
        prefix_cache_bytes=config.prefix_cache_bytes,
        prefix_store_dtype=config.prefix_store_dtype,
    )
    for name, source in specs:
        if on_load:
            on_load(name, source)
        try:
            table.add(name, source, label_lists.get(name), (verbalizers or {}).get(name))
        except PromptTuneError as e:
            raise PromptTuneError(f"TASK {name}={source}: {e}") from None
    return table


def parse_named(values: Sequence[str], flag: str) -> dict[str, str]:
    """``NAME=VALUE`` options (--labels, --verbalizer) -> {name: value}."""
    out: dict[str, str] = {}
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not rest:
            raise PromptTuneError(f"{flag} {v!r}: write {flag} NAME=VALUE, NAME being a TASK's name.")
        check_name(name, flag)
        if name in out:
            raise PromptTuneError(f"{flag} {name}: given twice.")
        out[name] = rest
    return out


def run(config: ServeConfig, table: TaskTable, graceful_s: float = 30.0) -> None:
    """Serve in the foreground until SIGINT/SIGTERM."""
    import signal

    import uvicorn

    from prompttune.serve.app import create_app

    app = create_app(config, table)
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # re-raised by uvicorn once drained: exit 0
    try:
        uvicorn.run(
            app, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=int(graceful_s)
        )
    finally:
        signal.signal(signal.SIGTERM, previous)


class ThreadedServer:
    """The app on a loopback port in a background thread: ``with ThreadedServer(app) as s: s.url``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 60.0):
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(self.config)
        self.server.install_signal_handlers = lambda: None  # not the main thread
        self.thread = threading.Thread(target=self.server.run, name="prompttune-serve", daemon=True)
        self.start_timeout_s = start_timeout_s
        self.url = ""

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(self.start_timeout_s)
