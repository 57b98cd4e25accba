#!/usr/bin/env bash
# Fuzz the ModelInferRequest parser and the native plane's fast-path checks with
# libFuzzer under AddressSanitizer and UndefinedBehaviorSanitizer:
#   bash scripts/fuzz.sh [SECONDS]   (default 60)
# Needs clang-14 and libclang-rt-14-dev (scripts/install-system-deps.sh) and
# icow importable (for the seed corpus).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

clang++-14 -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -Iext ext/core/*.cpp ext/plane/plan.cpp tests/fuzz/fuzz_parse.cc -o "$work/fuzz_parse"
python tests/fuzz/make_corpus.py "$work/corpus"
echo "fuzz: parser and fast-path plan, ${seconds}s, $(ls "$work/corpus" | wc -l) seeds"
"$work/fuzz_parse" -max_total_time="$seconds" -max_len=4096 -timeout=5 -rss_limit_mb=2048 \
  -print_final_stats=1 -artifact_prefix="$work/" "$work/corpus" 2>&1 | tail -n 15
