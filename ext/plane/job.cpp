#include "job.hpp"

#include <algorithm>

#include "binding.hpp"
#include "call.hpp"
#include "core/clock.hpp"
#include "gil.hpp"

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

// ---- A job whose caller waits ---------------------------------------------------
namespace {
constexpr int64_t POLL_NS = 50'000'000;  // how soon a caller gone while it waits is noticed (as scheduler.py)
}

WaitedJob::WaitedJob(std::shared_ptr<ModelEntry> entry, const Plan &plan, std::vector<char *> outputs,
                     int64_t arrived_ns, int64_t deadline_ns, bool by_queue, Workers *workers)
    : outputs_(std::move(outputs)) {
    entry_ = std::move(entry);
    plan_ = plan;
    arrived_ns_ = arrived_ns;
    deadline_ns_ = deadline_ns;
    queue_timeout_ = by_queue;
    workers_ = workers;
}

void WaitedJob::run_on(const ModelEntry &entry, size_t instance) {
    if (left_early(entry)) return;
    const int64_t start = now_ns();
    int64_t fed = 0;
    {
        Gil gil;
        try {
            fed = bind_and_run(entry, entry.instances[instance], plan_.inputs, plan_.input_shapes, plan_.outputs,
                               plan_.response, outputs_);
        } catch (const std::exception &) {
            finish({End::FULL_PATH, {}});
            return;
        }
    }
    const int64_t ran = now_ns();
    entry.ran(ran - fed);
    entry.tally->request(plan_.rows, ran - arrived_ns_, start - arrived_ns_, fed - start, ran - fed, 0, true);
    batch_done(start, fed, ran);
}

void WaitedJob::batch_done(int64_t start, int64_t fed, int64_t ran) {
    start_ns = start, fed_ns = fed, ran_ns = ran;
    finish({End::DONE, {}});
}

WaitedJob::End WaitedJob::queue_and_wait(const std::function<bool()> &alive) {
    ModelEntry &entry = *entry_;
    size_t instance = SIZE_MAX;
    {
        std::lock_guard<std::mutex> lock(entry.mu);
        const size_t in_line = entry.waiting.size() + entry.direct_waiting.size() + entry.forming.size();
        if (entry.max_queue && in_line >= entry.max_queue) return {End::REFUSED, entry.queue_full(in_line)};
        entry.waiting.push_back(this);
        if (!entry.idle.empty()) {
            instance = entry.idle.back();
            entry.idle.pop_back();
        }
    }
    entry.more.notify_all();  // a batch being formed may take it
    if (instance != SIZE_MAX) workers_->post([e = entry_, instance] { Call::batch_loop(e, instance); });
    for (;;) {
        bool expired = false;
        {
            py::gil_scoped_release nogil;
            std::unique_lock<std::mutex> lock(mu_);
            const int64_t poll = now_ns() + POLL_NS;
            done_.wait_until(lock, at_ns(deadline_ns_ ? std::min(deadline_ns_, poll) : poll),
                             [this] { return finished_; });
            if (finished_) return end_;
            expired = deadline_ns_ && now_ns() >= deadline_ns_;
        }
        if ((expired || !alive()) && leave_queue())
            return {End::REFUSED, expired ? entry.expired(queue_timeout_) : ModelEntry::cancelled()};
    }
}

// Told under its lock: the waiter may return (and this go) once it is released.
void WaitedJob::finish(const End &end) {
    std::lock_guard<std::mutex> lock(mu_);
    end_ = end;
    finished_ = true;
    done_.notify_one();
}

// Out of the queue or a forming batch; false: a batch has it (it will finish).
bool WaitedJob::leave_queue() {
    ModelEntry &entry = *entry_;
    Job *me = this;
    std::lock_guard<std::mutex> lock(entry.mu);
    const auto waiting = std::find(entry.waiting.begin(), entry.waiting.end(), me);
    if (waiting != entry.waiting.end()) {
        entry.waiting.erase(waiting);
        return true;
    }
    const auto forming = std::find(entry.forming.begin(), entry.forming.end(), me);
    if (forming == entry.forming.end()) return false;
    entry.forming.erase(forming);
    entry.more.notify_all();  // the batch being formed drops it
    return true;
}

}  // namespace icow::plane
