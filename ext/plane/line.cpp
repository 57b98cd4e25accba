#include "line.hpp"

#include <algorithm>

#include "call.hpp"
#include "core/clock.hpp"

namespace icow::plane {
namespace {

constexpr int64_t POLL_NS = 50'000'000;  // how soon a cancelled caller in line is noticed (as scheduler.py)

// Out of line without an instance; true if one was handed over meanwhile (then it is the caller's).
bool leave_line(ModelEntry &entry, ModelEntry::Waiter *me) {
    std::lock_guard<std::mutex> lock(entry.mu);
    if (me->instance != ModelEntry::NO_INSTANCE) return true;
    entry.direct_waiting.erase(std::find(entry.direct_waiting.begin(), entry.direct_waiting.end(), me));
    return false;
}

}  // namespace

void give_back(ModelEntry &entry, size_t instance) {
    std::unique_lock<std::mutex> lock(entry.mu);
    const int64_t first_call = entry.waiting.empty() ? 0 : entry.waiting.front()->arrived_ns();
    if (entry.hand_to_waiter(instance, first_call)) return;
    if (entry.waiting.empty()) {
        entry.idle.push_back(instance);
        return;
    }
    Job *job = entry.waiting.front();
    entry.waiting.pop_front();
    lock.unlock();
    Call::take_over(job, instance);
}

// Whoever holds entry.mu never waits for the GIL, so taking it here cannot deadlock.
Wait take_instance(ModelEntry &entry, int64_t deadline_ns, const std::function<bool()> &alive, size_t *instance,
                   size_t *in_line, bool may_wait) {
    ModelEntry::Waiter me;
    {
        std::lock_guard<std::mutex> lock(entry.mu);
        if (!entry.idle.empty()) {  // then nobody is in line: instances go to the line first
            *instance = entry.idle.back();
            entry.idle.pop_back();
            return Wait::TOOK;
        }
        if (!may_wait) return Wait::BUSY;
        *in_line = entry.direct_waiting.size() + entry.waiting.size();  // both lines: one queue bound
        if (entry.max_queue && *in_line >= entry.max_queue) return Wait::QUEUE_FULL;
        me.arrived_ns = now_ns();
        entry.direct_waiting.push_back(&me);
    }
    for (;;) {
        bool expired = false;
        {
            py::gil_scoped_release nogil;
            std::unique_lock<std::mutex> lock(entry.mu);
            const int64_t poll = now_ns() + POLL_NS;
            const int64_t until = deadline_ns ? std::min(deadline_ns, poll) : poll;
            me.handed.wait_until(lock, at_ns(until), [&] { return me.instance != ModelEntry::NO_INSTANCE; });
            if (me.instance != ModelEntry::NO_INSTANCE) {
                *instance = me.instance;
                return Wait::TOOK;
            }
            expired = deadline_ns && now_ns() >= deadline_ns;
        }
        if (expired || !alive()) {
            if (!leave_line(entry, &me)) return expired ? Wait::EXPIRED : Wait::CANCELLED;
            *instance = me.instance;  // handed over as it gave up: used after all
            return Wait::TOOK;
        }
    }
}

Refusal refusal_of(const ModelEntry &entry, Wait wait, size_t in_line, bool by_queue) {
    if (wait == Wait::QUEUE_FULL) return entry.queue_full(in_line);
    if (wait == Wait::EXPIRED) return entry.expired(by_queue);
    return ModelEntry::cancelled();
}

}  // namespace icow::plane
