// Large request and response buffers, reused. A fresh 12 MiB block is a fresh
// mapping: every call would fault in and zero 3 000 pages twice (the request
// made contiguous, the response). Kept blocks are faulted in already.
//
// Bounded and given back: at most `limit` bytes are kept idle (icow serve
// --buffer-pool-mb), and trim() unmaps blocks no call has taken for a while
// (icow.services.memory calls it). Blocks are mmap'd, not malloc'd, so that a
// block let go is returned to the system at once: glibc would keep a freed
// 12 MiB chunk in its arena once its mmap threshold has risen past that size.
#pragma once

#include <grpcpp/support/slice.h>
#include <sys/mman.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <new>

#include "core/clock.hpp"

namespace icow::plane {

class BufferPool {
  public:
    static constexpr size_t MIN_SIZE = 256 << 10;           // smaller ones: malloc is cheap there
    static constexpr size_t DEFAULT_LIMIT = 256ull << 20;   // bytes kept idle at most

    // A block of at least `size` bytes (size >= MIN_SIZE), to give back with put().
    char *take(size_t size, size_t *capacity) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            auto found = idle_.lower_bound(size);
            if (found != idle_.end() && found->first <= size + size / 4) {  // not much larger than asked
                *capacity = found->first;
                char *block = found->second.block;
                kept_ -= found->first;
                idle_.erase(found);
                return block;
            }
        }
        *capacity = round_to_pages(size);
        void *block = mmap(nullptr, *capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (block == MAP_FAILED) throw std::bad_alloc();
        return static_cast<char *>(block);
    }

    void put(char *block, size_t capacity) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (kept_ + capacity <= limit_) {
                idle_.emplace(capacity, Idle{block, now_ns()});
                kept_ += capacity;
                return;
            }
        }
        munmap(block, capacity);
    }

    // Unmaps the blocks idle since before `idle_ns` ago; the bytes given back.
    size_t trim(int64_t idle_ns) {
        const int64_t before = now_ns() - idle_ns;
        return drop([before](const Idle &idle) { return idle.since <= before; });
    }

    // At most `bytes` kept idle from now on; more than that is unmapped now.
    void set_limit(size_t bytes) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            limit_ = bytes;
        }
        drop([this](const Idle &) { return kept_ > limit_; });
    }

    size_t kept() {
        std::lock_guard<std::mutex> lock(mu_);
        return kept_;
    }

    size_t limit() {
        std::lock_guard<std::mutex> lock(mu_);
        return limit_;
    }

    ~BufferPool() {
        for (auto &[capacity, idle] : idle_) munmap(idle.block, capacity);
    }

    // A slice of `size` bytes from the pool; the block returns when gRPC is done with it.
    grpc::Slice slice(size_t size) {
        if (size < MIN_SIZE) return grpc::Slice(size);
        auto *owner = new Owner{this, nullptr, 0};
        owner->block = take(size, &owner->capacity);
        return grpc::Slice(owner->block, size, &Owner::release, owner);
    }

  private:
    struct Idle {
        char *block;
        int64_t since;  // now_ns() when put back
    };

    struct Owner {
        BufferPool *pool;
        char *block;
        size_t capacity;
        static void release(void *self) {
            auto *owner = static_cast<Owner *>(self);
            owner->pool->put(owner->block, owner->capacity);
            delete owner;
        }
    };

    static size_t round_to_pages(size_t size) {
        constexpr size_t PAGE = 4096;
        return (size + PAGE - 1) / PAGE * PAGE;
    }

    // Unmaps, largest first, the idle blocks `pick` chooses (it sees kept_ as it falls).
    template <class Pick>
    size_t drop(Pick pick) {
        std::multimap<size_t, char *> gone;
        {
            std::lock_guard<std::mutex> lock(mu_);
            for (auto it = idle_.end(); it != idle_.begin();) {
                --it;
                if (!pick(it->second)) continue;
                gone.emplace(it->first, it->second.block);
                kept_ -= it->first;
                it = idle_.erase(it);
            }
        }
        size_t freed = 0;
        for (auto &[capacity, block] : gone) {  // outside the lock: munmap of many pages takes a while
            munmap(block, capacity);
            freed += capacity;
        }
        return freed;
    }

    std::mutex mu_;
    std::multimap<size_t, Idle> idle_;  // capacity -> block
    size_t kept_ = 0;
    size_t limit_ = DEFAULT_LIMIT;
};

// The process's pool: slices from it may outlive any one server.
inline BufferPool &buffers() {
    static BufferPool *pool = new BufferPool();
    return *pool;
}

}  // namespace icow::plane
