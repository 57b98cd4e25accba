// The clock of deadlines and durations on both sides: steady_clock, in ns.
//
// Python stamps deadlines with time.monotonic_ns(), which on Linux reads
// CLOCK_MONOTONIC; so does std::chrono::steady_clock there (libstdc++). That is
// why a deadline can cross from Python to C++ as a bare number (the grpcio
// plane's deadline_ns into Direct::serve) and be compared with now_ns() here.
#pragma once

#include <chrono>
#include <cstdint>

namespace icow {

using Clock = std::chrono::steady_clock;

inline int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

// An instant given in ns on this clock, for wait_until.
inline Clock::time_point at_ns(int64_t ns) { return Clock::time_point(std::chrono::nanoseconds(ns)); }

}  // namespace icow
