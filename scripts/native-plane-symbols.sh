#!/usr/bin/env bash
# The evidence that grpcio's gRPC core and the system's gRPC C++ libraries
# (under icow._plane) cannot clash in one process (docs/native-plane.md,
# "Coexistence"): what each side exports, what it leaves for the dynamic linker
# to find, and that both really are mapped at once.
#
#   bash scripts/native-plane-symbols.sh        # in the venv where icow is installed
set -euo pipefail
py="${PYTHON:-python}"
cygrpc="$("$py" -c 'import grpc._cython.cygrpc as m; print(m.__file__)')"
plane="$("$py" -c 'import icow._plane as m; print(m.__file__)')"
# Debian's libgrpc.so.29, or the wheel's copy in icow.libs/ under a hashed name (libgrpc-1a2b3c4d.so.29...)
libgrpc="$(ldd "$plane" | awk '$1 ~ /^libgrpc(-[0-9a-f]+)?\.so/ {print $3}')"

echo "== grpcio's cygrpc: $cygrpc"
echo "NEEDED: $(readelf -d "$cygrpc" | awk '/NEEDED/{gsub(/[][]/,"",$5); printf "%s ", $5}')"
echo "defined dynamic symbols: $(nm -D --defined-only "$cygrpc" | wc -l) ($(nm -D --defined-only "$cygrpc" | awk '{print $3}' | tr '\n' ' '))"
echo "STB_GNU_UNIQUE symbols: $(readelf --dyn-syms -W "$cygrpc" | grep -c UNIQUE || true)"
echo "undefined symbols outside libc/libstdc++/Python (all weak):"
readelf --dyn-syms -W "$cygrpc" | awk '$7=="UND" && $8!="" && $8 !~ /@|^Py|^_Py|^_ITM|^__gmon|^__gcov|^_ZGTt/ {print "   ", $5, $8}'

echo
echo "== icow._plane: $plane"
echo "NEEDED: $(readelf -d "$plane" | awk '/NEEDED/{gsub(/[][]/,"",$5); printf "%s ", $5}')"
echo "defined dynamic symbols: $(nm -D --defined-only "$plane" | wc -l) (PyInit__plane and libstdc++ template instances)"
echo "gRPC / abseil symbols it imports: $(nm -D --undefined-only "$plane" | c++filt | grep -cE 'grpc|absl')"

echo
echo "== do the system's gRPC libraries define any name cygrpc leaves undefined?"
for sym in $(readelf --dyn-syms -W "$cygrpc" | awk '$7=="UND" && $8 !~ /@|^Py|^_Py|^_ITM|^__gmon|^__gcov|^_ZGTt/ {print $8}'); do
    for lib in $(ldd "$plane" | awk '$3 ~ /^\// {print $3}'); do
        if nm -D --defined-only "$lib" 2>/dev/null | awk '{print $3}' | grep -qx "$sym"; then echo "    CLASH: $sym in $lib"; fi
    done
done
echo "    (none printed above: none)"
echo "abseil's inline namespace (part of every abseil symbol name): cygrpc" \
     "$(readelf --dyn-syms -W "$cygrpc" | awk '{print $8}' | c++filt | grep -o 'absl::[a-z0-9_]*::' | sort -u | tr '\n' ' ')," \
     "system libgrpc $(nm -D "$libgrpc" | c++filt | grep -o 'absl::[a-z0-9_]*::' | sort | uniq -c | sort -rn | awk 'NR==1{print $2}')"

echo
echo "== one process: both loaded, each with its own core"
"$py" - <<'PY'
import sys, os, grpc
from icow import _plane
maps = open("/proc/self/maps").read()
libs = sorted({line.split()[-1] for line in maps.splitlines() if "grpc" in line.split()[-1]})
print("dlopen flags of extension modules:", sys.getdlopenflags(), "(RTLD_NOW; RTLD_GLOBAL would be", os.RTLD_GLOBAL, ")")
print("grpcio", grpc.__version__, "| icow._plane on gRPC C++", _plane.GRPC_VERSION)
print("mapped:", *libs, sep="\n    ")
PY
