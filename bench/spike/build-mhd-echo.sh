#!/usr/bin/env bash
# Builds the C++ spike servers into bench/spike/build/: mhd-echo (libmicrohttpd)
# and, when libcpp-httplib-dev is there, httplib-echo. Debian packages:
#   apt-get install g++ pkg-config libmicrohttpd-dev rapidjson-dev [libcpp-httplib-dev]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$here/build"
flags=(-O2 -std=c++17 -Wall -Wextra -I"$here")
g++ "${flags[@]}" "$here/mhd_echo.cpp" -o "$here/build/mhd-echo" $(pkg-config --cflags --libs libmicrohttpd) -pthread
if [ -f /usr/include/httplib.h ]; then
  # Debian's header is the split build: the implementation is in libcpp-httplib.so.
  g++ "${flags[@]}" "$here/httplib_echo.cpp" -o "$here/build/httplib-echo" \
      $(pkg-config --cflags --libs cpp-httplib 2>/dev/null || echo -lcpp-httplib) -pthread
fi
ls -l "$here/build"
