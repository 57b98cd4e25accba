// When the byte work of a request or response is done without the GIL.
#pragma once

#include <cstddef>

namespace icow {

// From this many bytes up, parsing a request or copying an output gives up the
// GIL. Below it the GIL is kept: giving it up costs more than the work, and
// taking it back can wait for another thread's whole switch interval.
inline constexpr size_t RELEASE_GIL_BYTES = 64 * 1024;

}  // namespace icow
