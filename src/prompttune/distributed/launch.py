"""`prompttune train --nproc N`: torchrun started for the user, on this machine, over the loopback interface.

No torch import here: the CLI calls this before anything heavy loads.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from prompttune.core.errors import PromptTuneError

MAX_LOCAL_PROCS = 64


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def strip_flag(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def loopback_env(nproc: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a one-machine run: the cores split between the processes, gloo on the loopback."""
    env = dict(os.environ if env is None else env)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    elif sys.platform == "darwin":
        env.setdefault("GLOO_SOCKET_IFNAME", "lo0")
    return env


def torchrun_command(nproc: int, args: list[str], port: int | None = None) -> list[str]:
    """``python -m torch.distributed.run`` for ``nproc`` processes on this machine running ``prompttune ARGS``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port or free_port()),
        "-m",
        "prompttune",
        *args,
    ]


def launch_local(nproc: int, args: list[str], resumable: bool = True) -> None:
    """Run ``prompttune ARGS`` in ``nproc`` processes under torchrun; an error naming what failed if any did
    (``resumable``: the command keeps a checkpoint that ``--resume`` continues from)."""
    if not 2 <= nproc <= MAX_LOCAL_PROCS:
        raise PromptTuneError(f"--nproc {nproc}: must be between 1 and {MAX_LOCAL_PROCS}.")
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise PromptTuneError("--nproc: this process already runs under a launcher (WORLD_SIZE is set); drop --nproc.")
    proc = subprocess.run(torchrun_command(nproc, args), env=loopback_env(nproc))
    if proc.returncode != 0:
        raise PromptTuneError(
            f"--nproc {nproc}: a training process failed (torchrun exit code {proc.returncode}; its error is "
            "printed above). "
            + (
                "The last checkpoint in --out is kept: rerun with --resume (any --nproc) to continue."
                if resumable
                else "Nothing was saved: rerun the command."
            )
        )
