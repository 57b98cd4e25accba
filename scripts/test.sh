#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine and run them:
#   bash scripts/test.sh [pytest arguments]
# System packages (the C++ client test, the fuzzer), then icow built from this checkout
# with its test extra by scripts/install.sh (a virtualenv in .venv unless one is
# active: the README's own install path), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1; then
  bash scripts/install-system-deps.sh test
fi
bash scripts/install.sh -e ".[test]"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi

# Triton's perf_analyzer, for the test that drives icow with it (a venv of its own:
# it ships only in an older tritonclient wheel). Needs root for its one apt package.
if [ "$(id -u)" = 0 ] || ldconfig -p | grep -q 'libb64\.so\.0d'; then
  bash bench/setup_perf_analyzer.sh >/dev/null
fi
python -m pytest "$@"
