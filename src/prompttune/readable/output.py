"""The hardened template file: checked before any work, written atomically, never over an unrelated file.

The file is a template YAML (what ``--template FILE``, ``prompttune eval FILE`` and ``prompttune registry``
read) whose first line marks it as harden's output; only such a file is replaced, and only with
``--overwrite``. The accuracies go in its ``description`` and in comment lines above it.
"""

from __future__ import annotations

from pathlib import Path

from prompttune.core import atomic
from prompttune.core.errors import PromptTuneError
from prompttune.core.template import Template

MARK = "# prompttune harden:"
SUFFIXES = (".yaml", ".yml")


def is_hardened(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().startswith(MARK)
    except (OSError, UnicodeDecodeError):
        return False


def check_template_output(path: Path, overwrite: bool, flag: str = "--out") -> None:
    """Refuse, before anything loads, an output that is not a new .yaml file or an earlier harden output."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise PromptTuneError(f"{flag} {path}: name a .yaml file (templates are read by their suffix).")
    if path.is_dir():
        raise PromptTuneError(f"{flag} {path}: is a folder; name a .yaml file to write the template to.")
    if path.exists():
        if not is_hardened(path):
            raise PromptTuneError(
                f"{flag} {path}: the file exists and was not written by prompttune harden; it is left as it is. "
                "Choose another path."
            )
        if not overwrite:
            raise PromptTuneError(f"{flag} {path}: holds an earlier harden output; pass --overwrite to replace it.")
    atomic.check_writable_parent(path, flag)


def write_template(path: Path, template: Template, comments: list[str]) -> None:
    """The marker line, comment lines, then the template's YAML, in one atomic write."""
    head = [f"{MARK} {comments[0]}" if comments else MARK] + [f"# {c}" for c in comments[1:]]
    atomic.write_text(Path(path), "\n".join(head) + "\n" + template.to_yaml())
