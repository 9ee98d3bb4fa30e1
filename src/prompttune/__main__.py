"""``python -m prompttune``: the command line (what torchrun's ``-m prompttune`` starts in every process).

The program's entry point, not library code: it runs the CLI package as a script."""

import runpy

runpy.run_module("prompttune.cli", run_name="__main__", alter_sys=True)
