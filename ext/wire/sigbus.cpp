#include "sigbus.hpp"

#include <atomic>
#include <csignal>
#include <mutex>
#include <sys/mman.h>
#include <unistd.h>

namespace icow::sigbus {
namespace {

constexpr int SLOTS = 1024;  // above --shm-max-regions' useful range

struct Slot {
    std::atomic<uintptr_t> start{0};  // 0: free
    std::atomic<size_t> length{0};
    std::atomic<bool> faulted{false};
};

Slot slots[SLOTS];
std::mutex writers;  // guard/unguard; the handler only reads, with atomics
struct sigaction previous;
uintptr_t page_mask;
std::once_flag installed;

void on_sigbus(int signal, siginfo_t *info, void *context) {
    const auto address = reinterpret_cast<uintptr_t>(info->si_addr);
    for (auto &slot : slots) {
        const uintptr_t start = slot.start.load(std::memory_order_acquire);
        if (start == 0 || address < start || address - start >= slot.length.load(std::memory_order_acquire)) continue;
        // mmap is a plain system call here; it is what makes the access restartable.
        void *page = reinterpret_cast<void *>(address & page_mask);
        if (mmap(page, ~page_mask + 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) !=
            MAP_FAILED) {
            slot.faulted.store(true, std::memory_order_release);
            return;
        }
        break;
    }
    // Not ours (or no page could be mapped): whoever handled SIGBUS before us decides.
    if (previous.sa_flags & SA_SIGINFO) {
        previous.sa_sigaction(signal, info, context);
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(signal);
    } else {
        sigaction(SIGBUS, &previous, nullptr);  // the access faults again and takes the default action
    }
}

void install() {
    page_mask = ~(static_cast<uintptr_t>(sysconf(_SC_PAGESIZE)) - 1);
    struct sigaction action {};
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    sigaction(SIGBUS, &action, &previous);
}

}  // namespace

int guard(uintptr_t start, size_t length) {
    std::call_once(installed, install);
    std::lock_guard<std::mutex> lock(writers);
    for (int i = 0; i < SLOTS; ++i) {
        if (slots[i].start.load(std::memory_order_relaxed) != 0) continue;
        slots[i].faulted.store(false, std::memory_order_relaxed);
        slots[i].length.store(length, std::memory_order_relaxed);
        slots[i].start.store(start, std::memory_order_release);
        return i;
    }
    return -1;
}

void unguard(int slot) {
    if (slot < 0 || slot >= SLOTS) return;
    std::lock_guard<std::mutex> lock(writers);
    slots[slot].start.store(0, std::memory_order_release);
}

bool faulted(int slot) {
    return slot >= 0 && slot < SLOTS && slots[slot].faulted.load(std::memory_order_acquire);
}

}  // namespace icow::sigbus
