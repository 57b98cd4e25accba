#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine and run them:
#   bash scripts/test.sh [pytest arguments]
# System packages (for the C++ client test), a virtualenv in .venv (unless one
# is active), icow built from this checkout with its test extras, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1; then
  bash scripts/install-system-deps.sh
fi

if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi

python -m pip install -q --upgrade pip
python -m pip install -q -e ".[test]"
# Triton's perf_analyzer, for the test that drives icow with it (a venv of its own:
# it ships only in an older tritonclient wheel). Needs root for its one apt package.
if [ "$(id -u)" = 0 ] || ldconfig -p | grep -q 'libb64\.so\.0d'; then
  bash bench/setup_perf_analyzer.sh >/dev/null
fi
python -m pytest "$@"
