// How many calls are alive, and a wait until none is. A call counts from its
// construction to the end of its destructor, so that Server::stop tears down
// nothing a call can still touch. (The backend's channel is the case in point:
// a call's ClientContext holds it, and when that reference is the last one, the
// channel goes on the gRPC thread that deletes the call — and takes gRPC's
// callback queue, which that very thread is still polling, with it.)
#pragma once

#include <condition_variable>
#include <cstddef>
#include <mutex>

namespace icow::plane {

class Census {
  public:
    // Counted while it lives: the first member of what is counted, so that it goes last.
    class Member {
      public:
        explicit Member(Census &census) : census_(census) { census_.join(); }
        ~Member() { census_.leave(); }
        Member(const Member &) = delete;
        Member &operator=(const Member &) = delete;

      private:
        Census &census_;
    };

    void wait_until_empty() {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return count_ == 0; });
    }

  private:
    void join() {
        std::lock_guard<std::mutex> lock(mu_);
        ++count_;
    }
    void leave() {
        std::lock_guard<std::mutex> lock(mu_);  // notified under the lock: the waiter may free this at once
        if (--count_ == 0) cv_.notify_all();
    }

    std::mutex mu_;
    std::condition_variable cv_;
    size_t count_ = 0;
};

}  // namespace icow::plane
