#!/usr/bin/env bash
# One GPU check (scripts/gpu_check.py, whose docstring has the tiers, the budget and the targets): correctness tests,
# then the op rows, then the models, then benchmarks' README table; the last output lines are one line per target.
#
#   scripts/gpu_check.sh --commit HASH --out DIR       # on a GPU machine: the results JSON, README.md, gpu-check.log
#   scripts/gpu_check.sh --smoke --out /tmp/check      # on a CPU: the same path at tiny sizes (Triton interpreter)
#
# Runs from the checkout with PYTHONPATH=<checkout> and the machine's own python3 (PYTHON=... to choose another);
# it needs no pip and no hydra. A `timeout` at the check's budget + 30 s backs up the check's own deadlines.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"

budget=290  # the Python side's default --budget (870 with --smoke), for the backstop below
prev=""
for arg in "$@"; do
  if [ "$arg" = "--smoke" ]; then budget=870; fi
done
for arg in "$@"; do
  if [ "$prev" = "--budget" ]; then budget="$arg"; fi
  case "$arg" in --budget=*) budget="${arg#--budget=}" ;; esac
  prev="$arg"
done

if command -v timeout >/dev/null 2>&1; then
  limit=$(( ${budget%.*} + 30 ))
  exec timeout --signal=TERM --kill-after=15 "$limit" "$PYTHON" scripts/gpu_check.py "$@"
fi
exec "$PYTHON" scripts/gpu_check.py "$@"
