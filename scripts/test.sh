#!/usr/bin/env bash
# Pass the test suite: set up (venv, packages) if needed, then run every test (slow ones included).
#   scripts/test.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec python -m pytest -q "$@"
