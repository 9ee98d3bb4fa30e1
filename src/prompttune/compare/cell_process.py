"""A comparison cell's own process: ``python -m prompttune.compare.cell_process SPEC RESULT`` (``runner.py``).

A module of its own because the package imports ``cell``: running ``-m prompttune.compare.cell`` executed it a
second time, and Python warned about it in every cell's log.
"""

import sys

from prompttune.compare.cell import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
