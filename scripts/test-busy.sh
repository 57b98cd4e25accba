#!/usr/bin/env bash
# The tests on a machine whose cores are all busy, as a shared CI runner's may be:
#   bash scripts/test-busy.sh [pytest arguments]
# Starts one spinning process per core (ICOW_BUSY_CORES to choose how many), at the
# tests' own niceness so that they compete as equals, runs pytest, then stops them.
# A test that orders events by the clock instead of by what it can observe fails
# here far more often than on an idle machine. Needs no package: the spinners are bash.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi

cores="${ICOW_BUSY_CORES:-$(nproc)}"
spinners=()
stop() {
  for pid in "${spinners[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
trap stop EXIT
for _ in $(seq "$cores"); do
  (while :; do :; done) &
  spinners+=("$!")
done
echo "test-busy: $cores spinning process(es) at niceness $(nice), pids ${spinners[*]}" >&2
python -m pytest "$@"
