// Queue timeouts on the native plane, kept when they pass: a call whose model's
// queue timeout (default_timeout_microseconds) or deadline passes while it waits
// is failed then, not when an instance frees up and finds it late. (A client's
// own deadline or cancel also reaches the call through OnCancel.)
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace icow::plane {

struct ModelEntry;

class Expiry {
  public:
    // `sweep(entry, now)` fails the calls of `entry`'s queue that are due by `now`
    // and returns the next deadline of those left (0: none).
    using Sweep = std::function<int64_t(ModelEntry &entry, int64_t now)>;

    explicit Expiry(Sweep sweep);
    ~Expiry();
    Expiry(const Expiry &) = delete;
    Expiry &operator=(const Expiry &) = delete;

    // A call with deadline `deadline_ns` (steady clock) joined `entry`'s queue.
    void watch(const std::shared_ptr<ModelEntry> &entry, int64_t deadline_ns);

  private:
    void loop();

    const Sweep sweep_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::unordered_map<ModelEntry *, std::shared_ptr<ModelEntry>> watched_;
    int64_t next_ = INT64_MAX;  // the earliest deadline watched
    bool stopping_ = false;
    std::thread thread_;  // last: started once the rest is made
};

}  // namespace icow::plane
