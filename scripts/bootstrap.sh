#!/usr/bin/env bash
# Set up everything tide needs, idempotently: system packages (apt, when root and missing), a venv, and the
# Python packages. Sourced by scripts/run.sh and scripts/test.sh; safe to run by itself.
#   TIDE_VENV        venv folder (default: .venv in the repo)
#   TIDE_PYTHON      python to build the venv with (default: first of python3.12 python3.11 python3.10 python3)
#   TIDE_TORCH_SPEC  torch requirement installed first (default: torch==2.13.0, the CPU build on this box)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TIDE_VENV:-$ROOT/.venv}"

say() { echo "[tide setup] $*" >&2; }

# -- system packages: Vulkan software driver (GGUI offscreen), libusb (open3d), ffmpeg not needed (imageio-ffmpeg)
need_apt=()
for pkg in mesa-vulkan-drivers libvulkan1 libusb-1.0-0; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${need_apt[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    say "missing system packages: ${need_apt[*]} (run: sudo apt-get install ${need_apt[*]}); continuing"
  fi
fi

# -- python and venv
if [ ! -x "$VENV/bin/python" ]; then
  PY="${TIDE_PYTHON:-}"
  if [ -z "$PY" ]; then
    for cand in python3.12 python3.11 python3.10 python3; do
      if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(not ((3,10) <= sys.version_info[:2] <= (3,12)))'; then
        PY="$cand"; break
      fi
    done
  fi
  [ -n "$PY" ] || { say "need Python 3.10-3.12 (taichi 1.7 supports no newer)"; exit 2; }
  say "creating venv $VENV with $PY"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi

# -- python packages, reinstalled only when pyproject.toml changes
stamp="$VENV/.tide-installed"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  if ! "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
    say "installing ${TIDE_TORCH_SPEC:-torch==2.13.0} (takes a minute or two)"
    "$VENV/bin/python" -m pip install -q "${TIDE_TORCH_SPEC:-torch==2.13.0}"
  fi
  say "installing tide and its dependencies"
  "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
