#!/usr/bin/env bash
# One-step set-up for a fresh Debian/Ubuntu machine (root, or a user with sudo):
# system packages (scripts/install-deps.sh), a virtual environment in .venv with
# scopecheck and its Python dependencies, then one job:
#   scripts/install.sh          run `scopecheck size` on the embedded mini-hyp fixture
#   scripts/install.sh --test   run the whole test suite (what CI runs)
#   scripts/install.sh --only   install, run nothing
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"

bash scripts/install-deps.sh

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp=.venv/.scopecheck-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi

case "${1:-}" in
  --test)
    shift
    exec .venv/bin/python -m pytest "$@"
    ;;
  --only)
    echo "installed: $here/.venv/bin/scopecheck" >&2
    ;;
  "")
    exec .venv/bin/scopecheck size
    ;;
  *)
    echo "usage: scripts/install.sh [--test [PYTEST ARGS...] | --only]" >&2
    exit 2
    ;;
esac
