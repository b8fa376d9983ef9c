#!/usr/bin/env bash
# Creates .venv with Python 3.10 and installs the fully pinned lock, then the project (console script
# `uniter`). Idempotent: a venv whose stamp matches the lock and pyproject is left as it is.
#
# The terminal gets one line per phase; pip's output goes to $UNITER_LOG_DIR (default
# ~/.cache/uniter/logs)/install-*.log, whose tail is printed if a phase fails.
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
# One line per phase on the terminal; pip's and the import check's output go to a log file (pip's
# DEPRECATION and "Location" warnings included). A failing phase prints the log's tail and its path.
LOG_DIR=${UNITER_LOG_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/uniter/logs}
mkdir -p "$LOG_DIR"
LOG="$LOG_DIR/install-$(date +%Y%m%d-%H%M%S)-$$.log"
: > "$LOG"
start=$(date +%s)
phase() {  # phase "what" command...: one line, the command's output to $LOG, the tail on failure
  local what=$1; shift
  echo "==> $what"
  echo "=== $what: $*" >> "$LOG"
  if ! "$@" >> "$LOG" 2>&1; then
    echo "error: ${what%% (*} failed; the last lines of $LOG:" >&2
    tail -n 25 "$LOG" | sed 's/^/    /' >&2
    echo "       full log: $LOG" >&2
    exit 1
  fi
}
pip_install() { "$VENV/bin/pip" install --disable-pip-version-check --no-input "$@"; }
packages=$(grep -cE '^[A-Za-z0-9_.-]+==' requirements.lock || true)
phase "creating $VENV with $PY (log: $LOG)" "$PY" -m venv "$VENV"
phase "installing $packages pinned packages from requirements.lock (a few minutes)" \
  pip_install --no-deps -r requirements.lock
phase "installing uniter-tf (editable, console script 'uniter')" \
  pip_install --no-deps --no-build-isolation -e .
phase "checking the imports" env TF_CPP_MIN_LOG_LEVEL=3 PYTHONWARNINGS=ignore "$VENV/bin/python" -c \
  "import tensorflow, tensorflow_text, keras, tfx.v1, apache_beam, uniter_tf"
echo "$want" > "$STAMP"
echo "==> installed in $(( $(date +%s) - start )) s"
