// Waiting in line for an instance, for callers that block until one is theirs:
// Direct's (the grpcio plane's fast path, the HTTP and stream lanes) and the
// steps of an ensemble. An entry the native plane shares has two lines, its
// calls (`waiting`) and these callers (`direct_waiting`); a freed instance goes to
// whichever came first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "models.hpp"

namespace icow::plane {

enum class Wait { TOOK, BUSY, QUEUE_FULL, EXPIRED, CANCELLED };  // BUSY: none idle, and the caller may not wait

// An instance of `entry` for this caller: an idle one at once, else the first to free
// up, waited for in line without the GIL (call it with the GIL held). `alive` (called
// with the GIL held, about every 50 ms while waiting): false once the caller is gone.
// `in_line`: how many waited before it (for a QUEUE_FULL refusal).
Wait take_instance(ModelEntry &entry, int64_t deadline_ns, const std::function<bool()> &alive, size_t *instance,
                   size_t *in_line, bool may_wait);

// Hand `instance` to the first in line, or leave it idle.
void give_back(ModelEntry &entry, size_t instance);

// The instance reserved for a caller, handed on when it is done with it (or fails).
class Reserved {
  public:
    Reserved(ModelEntry &entry, size_t instance) : entry_(entry), instance_(instance) {}
    ~Reserved() { give_back(entry_, instance_); }
    Reserved(const Reserved &) = delete;
    Reserved &operator=(const Reserved &) = delete;

  private:
    ModelEntry &entry_;
    const size_t instance_;
};

// The refusal a caller gets for `wait` (QUEUE_FULL, EXPIRED or CANCELLED).
Refusal refusal_of(const ModelEntry &entry, Wait wait, size_t in_line, bool by_queue);

}  // namespace icow::plane
