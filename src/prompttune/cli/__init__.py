"""The command line: typer commands that parse flags, call one library verb and print.

``prompttune.cli:main`` is the console script; ``app`` is the typer application.
"""

from prompttune.cli.app import app, main

__all__ = ["app", "main"]
