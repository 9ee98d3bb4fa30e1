"""Write docs/cli.md from the real --help of every command, so the reference cannot drift.

.venv/bin/python scripts/gen_cli_docs.py          (tests/test_docs.py checks it is up to date)
"""

from __future__ import annotations

import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _command_names(group, prefix: str = "") -> list[str]:
    """Every command and sub-command, in the order the CLI declares them (so none is left out)."""
    names = []
    for name, cmd in group.commands.items():
        full = f"{prefix}{name}"
        names.append(full)
        if hasattr(cmd, "commands"):
            names += _command_names(cmd, full + " ")
    return names


def render() -> str:
    import typer
    from typer.testing import CliRunner

    from prompttune.cli.app import app

    runner = CliRunner()
    names = _command_names(typer.main.get_command(app))
    parts = ["# CLI reference\n\nGenerated from `--help` by `scripts/gen_cli_docs.py`; do not edit by hand.\n"]
    for args in [[]] + [n.split() for n in names]:
        res = runner.invoke(
            app, [*args, "--help"], prog_name="prompttune", env={"COLUMNS": "100", "TERM": "dumb"}, color=False
        )
        title = " ".join(["prompttune", *args])
        parts.append(f"## `{title}`\n\n```\n{res.output.rstrip()}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render())
    print(f"wrote {DOC}", file=sys.stderr)
