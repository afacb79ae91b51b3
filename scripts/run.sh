#!/usr/bin/env bash
# The main job: set up (venv, packages) if needed, then run a short soft-robot co-design headlessly.
#   scripts/run.sh [extra `tide run` flags, e.g. --set key=value --frames N]
# Outputs land in runs/main (replaced on each call).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
SCENE="${TIDE_MAIN_SCENE:-scenes/codesign.py}"
mkdir -p runs
exec tide run "$SCENE" --out runs/main --overwrite "$@"
