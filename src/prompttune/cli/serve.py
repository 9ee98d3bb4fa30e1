"""`prompttune serve`: one frozen backbone, many tasks over HTTP (the library's ``prompttune.serve``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prompttune.cli.options import ModelOpt, Settings, err


def serve(
    tasks: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[TASK]...",
            help="NAME=SOURCE, SOURCE being an artifact directory, a registry reference (name@production), a "
            "template file, a built-in template name, or one task of a pack as PACK#TASK. A template with label "
            "words (--labels, or stored in the registry) is a zero-shot classifier; one without is a generation "
            "task. More can be added while the server runs (POST /v1/tasks).",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on. Anything but 127.0.0.1/localhost/::1 needs --api-keys.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    registry: Annotated[
        str | None, typer.Option("--registry", help="Registry database (path or URL) for NAME@LABEL sources.")
    ] = None,
    api_keys: Annotated[
        Path | None,
        typer.Option(
            "--api-keys",
            help="File of API keys, one a line: KEY (or sha256:HEX) [admin] [tasks=NAME,NAME]. Admin keys may add "
            "and remove tasks. Without it the server listens on loopback only and anyone there may use it.",
        ),
    ] = None,
    labels: Annotated[
        list[str] | None,
        typer.Option("--labels", help="NAME=LABEL,LABEL: the labels of a hard-prompt TASK (repeatable)."),
    ] = None,
    verbalizer: Annotated[
        list[str] | None,
        typer.Option("--verbalizer", help="NAME=SPEC: label words of a hard-prompt TASK, as for train (repeatable)."),
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Rows in one forward pass at most (tasks mixed).")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="How long a batch waits for more rows after its first.")] = 5.0,
    max_wait_share: Annotated[
        float,
        typer.Option(
            help="Or this share of the last batch's run time, where that is longer (at most 50 ms): clients "
            "answered together join the next batch together. 0: --max-wait-ms alone.",
        ),
    ] = 0.15,
    max_queue: Annotated[int, typer.Option(help="Rows waiting at most; more are answered 429.")] = 1024,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds a request may wait; then 504.")] = 60.0,
    max_body_bytes: Annotated[int, typer.Option(help="Request body size limit (413).")] = 1024 * 1024,
    max_rows: Annotated[int, typer.Option(help="Rows in one predict request at most (413).")] = 64,
    max_input_chars: Annotated[int, typer.Option(help="Characters of one row or prompt at most (413).")] = 16_384,
    max_tokens: Annotated[int, typer.Option(help="Largest max_tokens a completion may ask for (422).")] = 512,
    prefix_cache_mb: Annotated[
        float | None,
        typer.Option(
            "--prefix-cache-mb",
            help="Memory for cached task prefixes (keys/values), in MiB; the least recently used are dropped and "
            "computed again when needed. Default: no limit.",
        ),
    ] = None,
    prefix_cache_dtype: Annotated[
        str,
        typer.Option(
            "--prefix-cache-dtype",
            help="Keep cached task prefixes in bfloat16 or float16 (half the memory) or int8 (a quarter, with a "
            "scale per token and head) instead of the model's dtype (model): for servers of hundreds of tasks; "
            "scores move by the rounding.",
        ),
    ] = "model",
    registry_poll_s: Annotated[
        float,
        typer.Option(
            "--registry-poll-s",
            help="Seconds between checks of the registry labels tasks follow (NAME@LABEL); PostgreSQL registries "
            "also notify at once.",
        ),
    ] = 2.0,
    model: ModelOpt = None,
) -> None:
    """Serve many tasks from one frozen model over HTTP: predict, OpenAI-compatible completions, hot add/remove."""
    from prompttune.core.backbone import set_threads
    from prompttune.serve.auth import KeyStore
    from prompttune.serve.config import ServeConfig
    from prompttune.serve.runner import build_table, parse_named, run

    config = ServeConfig(
        host=host,
        port=port,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_wait_share=max_wait_share,
        max_queue=max_queue,
        timeout_s=timeout,
        max_body_bytes=max_body_bytes,
        max_rows=max_rows,
        max_input_chars=max_input_chars,
        max_tokens=max_tokens,
        prefix_cache_mb=prefix_cache_mb,
        prefix_cache_dtype=prefix_cache_dtype,
        registry_poll_s=registry_poll_s,
        model=model,
        registry=registry,
        api_keys=api_keys,
        **Settings.backbone_args(),
    )
    if config.open_access:
        err.print(f"no --api-keys: listening on {host} only, without authentication.", highlight=False)
    else:
        KeyStore.from_file(api_keys)  # a bad key file is an error before any model loads
    label_specs = parse_named(labels or [], "--labels")
    words = parse_named(verbalizer or [], "--verbalizer")
    set_threads()
    table = build_table(
        config,
        tasks or [],
        label_specs,
        words,
        on_load=lambda name, source: err.print(f"loading task {name} from {source}", highlight=False),
    )
    err.print(f"serving {len(table.names())} task(s) on http://{host}:{port} (OpenAPI page: /docs)", highlight=False)
    run(config, table)
