#include "expiry.hpp"

#include <utility>
#include <vector>

#include "call.hpp"
#include "core/clock.hpp"
#include "models.hpp"

namespace icow::plane {

Expiry::Expiry(Sweep sweep) : sweep_(std::move(sweep)), thread_([this] { loop(); }) {}

Expiry::~Expiry() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stopping_ = true;
    }
    cv_.notify_one();
    thread_.join();
}

void Expiry::watch(const std::shared_ptr<ModelEntry> &entry, int64_t deadline_ns) {
    bool sooner = false;
    {
        std::lock_guard<std::mutex> lock(mu_);
        watched_.try_emplace(entry.get(), entry);  // no node made when the entry is watched already
        sooner = deadline_ns < next_;
        if (sooner) next_ = deadline_ns;
    }
    if (sooner) cv_.notify_one();
}

void Expiry::loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopping_) {
        if (watched_.empty()) {
            cv_.wait(lock);
            continue;
        }
        if (now_ns() < next_) {
            cv_.wait_until(lock, at_ns(next_));
            continue;
        }
        // Swept without the lock: a sweep takes each entry's own lock, under which
        // the plane's threads call watch().
        auto due = std::move(watched_);
        watched_.clear();
        next_ = INT64_MAX;
        lock.unlock();
        std::vector<std::pair<std::shared_ptr<ModelEntry>, int64_t>> left;
        for (auto &[_, entry] : due) {
            const int64_t next = sweep_(*entry, now_ns());
            if (next) left.emplace_back(std::move(entry), next);
        }
        due.clear();  // an entry's last reference may go here: its destructor takes the GIL
        lock.lock();
        for (auto &[entry, next] : left) {
            watched_.try_emplace(entry.get(), entry);
            next_ = std::min(next_, next);
        }
    }
}

}  // namespace icow::plane
