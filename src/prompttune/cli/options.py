"""What every command line module shares: the consoles, the --model and --json options, JSON output."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", help="Backbone: a local HF folder, a hub id, or smollm2 (default decoder) / minilm (encoder)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")]
NprocOpt = Annotated[
    int,
    typer.Option(
        help="Data-parallel training in N processes on this machine (starts torchrun, loopback only; each process "
        "takes its part of every batch). Several machines or GPUs: see docs/distributed.md."
    ),
]


def launched(nproc: int, resumable: bool = True) -> bool:
    """With ``--nproc N`` (N > 1): this command started in N processes under torchrun, this process only starting
    them (call before anything heavy loads); False with ``--nproc 1``, the command then runs here."""
    if nproc == 1:
        return False
    from prompttune.distributed.launch import launch_local, strip_flag

    launch_local(nproc, strip_flag(sys.argv[1:], "--nproc"), resumable)
    return True


def emit_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


class Settings:
    """The root command's options (--dtype, --device), handed to every library call that loads a backbone."""

    dtype: str | None = None
    device: str | None = None

    @classmethod
    def backbone_args(cls) -> dict:
        return {"dtype": cls.dtype, "device": cls.device}


def load_backbone(model: str | None, console: Console):
    """The backbone the user asked for (--model, --dtype, --device), with a status line while it loads."""
    from prompttune.core.backbone import Backbone

    with console.status(f"loading backbone {model or 'smollm2-135m-instruct (default)'}"):
        return Backbone.load(model, **Settings.backbone_args())


def warn(text: str) -> None:
    """One warning line on stderr (the text printed as is, never read as markup)."""
    from rich.markup import escape

    err.print(f"[bold yellow]warning:[/] {escape(text)}", highlight=False)
