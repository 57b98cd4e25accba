// A guard against SIGBUS in mappings that another process can shrink.
//
// A client's shared-memory object may be truncated while a request reads or
// writes it; touching a page past the object's new end raises SIGBUS, which
// would kill the server. Ranges registered here are watched by a SIGBUS handler:
// a fault inside one maps a private zero page over the faulting page (so the
// access completes, on memory nobody else sees) and marks the range; faults
// anywhere else go to the handler that was there before. The caller checks
// `faulted` after the work and fails the request: its data are lost, the server
// is not.
#pragma once

#include <cstddef>
#include <cstdint>

namespace icow::sigbus {

// Watch [start, start + length); returns its slot, or -1 when every slot is taken.
int guard(uintptr_t start, size_t length);
// Stop watching a slot from guard().
void unguard(int slot);
// Whether a fault was absorbed in the slot's range since guard().
bool faulted(int slot);

}  // namespace icow::sigbus
