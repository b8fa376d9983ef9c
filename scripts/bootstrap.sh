#!/usr/bin/env bash
# Creates .venv with Python 3.10 and installs the fully pinned lock, then the project (console script
# `uniter`). Idempotent: a venv whose stamp matches the lock and pyproject is left as it is.
#
# Every package is pinned and installed with --no-deps: the pip 23 of a fresh 3.10 venv backtracks for
# over 40 minutes when it resolves this stack unpinned, and takes 2-4 minutes with the lock.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
STAMP="$VENV/.uniter-install-stamp"
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi

find_python310() {
  local candidate
  for candidate in "${PYTHON310:-}" python3.10; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  # pyenv: its shim fails unless 3.10 is selected, so look in its versions folder directly.
  local root="${PYENV_ROOT:-$HOME/.pyenv}"
  for candidate in "$root"/versions/3.10*/bin/python3.10; do
    if [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
  done
  return 1
}

PY=$(find_python310) || {
  echo "error: Python 3.10 not found (looked at \$PYTHON310, python3.10 on PATH, and pyenv's versions)." >&2
  echo "       Install it (e.g. 'pyenv install 3.10') or set PYTHON310=/path/to/python3.10." >&2
  exit 1
}
echo "==> creating $VENV with $PY"
start=$(date +%s)
"$PY" -m venv "$VENV"
# Some machines' pip config names missing local indexes; pip warns once per package about them.
pip_quiet() { "$VENV/bin/pip" "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
pip_quiet install -q --disable-pip-version-check --no-deps -r requirements.lock
pip_quiet install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
TF_CPP_MIN_LOG_LEVEL=3 PYTHONWARNINGS=ignore "$VENV/bin/python" -c "import tensorflow, tensorflow_text, keras, tfx.v1, apache_beam, uniter_tf"
echo "$want" > "$STAMP"
echo "==> installed in $(( $(date +%s) - start )) s"
