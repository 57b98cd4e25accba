#include "job.hpp"

#include <algorithm>

#include "core/clock.hpp"

namespace icow::plane {

bool Job::compatible(const Job &other) const {
    if (plan_.outputs != other.plan_.outputs) return false;
    for (size_t k = 0; k < plan_.input_shapes.size(); ++k) {
        const auto &a = plan_.input_shapes[k], &b = other.plan_.input_shapes[k];
        if (a.size() != b.size() || !std::equal(a.begin() + 1, a.end(), b.begin() + 1)) return false;
    }
    return true;
}

bool Job::left_early(const ModelEntry &entry) {
    if (cancelled_.load()) {
        fail(ModelEntry::cancelled());
        return true;
    }
    if (deadline_ns_ && now_ns() > deadline_ns_) {
        fail(entry.expired(queue_timeout_));
        return true;
    }
    return false;
}

}  // namespace icow::plane
