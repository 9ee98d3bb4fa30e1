"""Write-then-rename helpers: a crash never leaves a half-written file or directory over a good one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from prompttune.core.errors import PromptTuneError


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def check_output_dir(path: Path, flag: str, is_ours: Callable[[Path], bool], what: str, overwrite: bool) -> None:
    """Refuse, before any work, an output path that would destroy something: a file, a folder holding other
    files, or (without ``overwrite``) an earlier output of ours; and a place we cannot write to.

    ``is_ours(path)`` says whether an existing folder is a ``what`` this tool wrote (and may replace).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PromptTuneError(f"{flag} {path}: is a file, not a folder; choose another path (it is left as it is).")
    if path.is_dir() and any(path.iterdir()):
        if not is_ours(path):
            shown = ", ".join(sorted(p.name for p in path.iterdir())[:5])
            raise PromptTuneError(
                f"{flag} {path}: the folder holds other files ({shown}); prompttune replaces only a {what} it "
                "wrote. Choose a new or empty folder."
            )
        if not overwrite:
            raise PromptTuneError(f"{flag} {path}: holds a {what} already; pass --overwrite to replace it.")
    check_writable_parent(path, flag)


def check_writable_parent(path: Path, flag: str) -> None:
    """Refuse a path whose nearest existing parent folder this process cannot write in (before any work)."""
    parent = Path(path).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PromptTuneError(f"{flag} {path}: cannot write in {parent} (permission denied); choose another path.")


def write_dir(target: Path, fill: Callable[[Path], None]) -> None:
    """Build a directory in a temporary sibling, then swap it in place of ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        fill(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "dir")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
