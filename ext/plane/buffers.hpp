// Large request and response buffers, reused. A fresh 12 MiB malloc is a fresh
// mmap: every call would fault in and zero 3 000 pages twice (the request made
// contiguous, the response). Kept blocks are faulted in already.
#pragma once

#include <grpcpp/support/slice.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <new>

namespace icow::plane {

class BufferPool {
  public:
    static constexpr size_t MIN_SIZE = 256 << 10;    // smaller ones: malloc is cheap there
    static constexpr size_t MAX_KEPT = 256ull << 20;  // bytes kept idle at most

    // A block of at least `size` bytes (size >= MIN_SIZE), to give back with put().
    char *take(size_t size, size_t *capacity) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            auto found = idle_.lower_bound(size);
            if (found != idle_.end() && found->first <= size + size / 4) {  // not much larger than asked
                *capacity = found->first;
                char *block = found->second;
                kept_ -= found->first;
                idle_.erase(found);
                return block;
            }
        }
        *capacity = size;
        auto *block = static_cast<char *>(std::malloc(size));
        if (block == nullptr) throw std::bad_alloc();
        return block;
    }

    void put(char *block, size_t capacity) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (kept_ + capacity <= MAX_KEPT) {
                idle_.emplace(capacity, block);
                kept_ += capacity;
                return;
            }
        }
        std::free(block);
    }

    ~BufferPool() {
        for (auto &[capacity, block] : idle_) std::free(block);
    }

    // A slice of `size` bytes from the pool; the block returns when gRPC is done with it.
    grpc::Slice slice(size_t size) {
        if (size < MIN_SIZE) return grpc::Slice(size);
        auto *owner = new Owner{this, nullptr, 0};
        owner->block = take(size, &owner->capacity);
        return grpc::Slice(owner->block, size, &Owner::release, owner);
    }

  private:
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

    std::mutex mu_;
    std::multimap<size_t, char *> idle_;  // capacity -> block
    size_t kept_ = 0;
};

// The process's pool: slices from it may outlive any one server.
inline BufferPool &buffers() {
    static BufferPool *pool = new BufferPool();
    return *pool;
}

}  // namespace icow::plane
