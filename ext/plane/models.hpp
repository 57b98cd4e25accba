// The model table of the native plane: what Python publishes of each ready
// model version, enough for C++ to check a request, size its response and
// bind both to ONNX Runtime, with no Python on the lookup.
#pragma once

#include <pybind11/pybind11.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "binding.hpp"
#include "plan.hpp"
#include "tally.hpp"

namespace py = pybind11;

namespace icow::plane {

class Job;
struct EnsembleGraph;

// The Python objects ONNX Runtime's bind calls take for one tensor: its name, its numpy type.
struct BindNames {
    py::object name, type;
};

// One ONNX Runtime session: the objects beneath onnxruntime's Python wrapper.
struct Instance {
    py::object session, new_binding, device;
    py::object run_options;  // passed to every run: None would cost pybind11 a failed lookup per call
    mutable Binding binding;  // kept from run to run (binding.hpp)
};

// Why a call leaves its model's queue without running: the full path's status and
// words (scheduler.py), the same on both planes.
struct Refusal {
    int code;  // the gRPC status code's number
    std::string message;
};

// Dynamic batching as the config says (scheduling.Batching); max_rows 0: off.
struct Batching {
    int64_t max_rows = 0;
    std::vector<int64_t> preferred;
    int64_t max_delay_ns = 0;
};

class ModelEntry {
  public:
    ModelEntry(std::string name, int64_t version, int64_t max_batch_size, const py::list &inputs,
               const py::list &outputs, const py::list &instances, std::shared_ptr<Tally> tally,
               py::object record_failure, size_t max_queue, int64_t queue_timeout_ns, const py::object &batching,
               const py::object &ensemble);
    ~ModelEntry();
    ModelEntry(const ModelEntry &) = delete;
    ModelEntry &operator=(const ModelEntry &) = delete;

    // A call's deadline in the queue (steady ns, 0 none): its own, or the model's queue
    // timeout where that comes first (then *by_queue is set).
    int64_t queue_deadline(int64_t arrived_ns, int64_t call_deadline_ns, bool *by_queue) const;
    Refusal queue_full(size_t waiting) const;
    Refusal expired(bool by_queue) const;
    static Refusal cancelled();

    // An ensemble's plan leaves its outputs unsized: plan_ensemble sizes them through its graph.
    bool plan(const Request &request, const char *base, size_t max_response, Plan *plan,
              const char *text = nullptr) const {
        if (disabled.load(std::memory_order_relaxed)) return false;
        if (!ensemble) return plan_request(spec, request, base, max_response, plan, text);
        Symbols symbols;
        return plan_inputs_and_outputs(spec, request, base, plan, &symbols, text);
    }

    ModelSpec spec;
    std::vector<BindNames> input_names, output_names;  // index-aligned with spec.inputs, spec.outputs
    std::vector<Instance> instances;
    const std::shared_ptr<Tally> tally;  // the version's statistics, shared by its entries
    py::object record_failure;           // VersionStats.record_failure
    Batching batching;
    std::shared_ptr<const EnsembleGraph> ensemble;  // set: an ensemble, with no instances (ensemble.hpp)
    const size_t max_queue;             // 0: no bound
    const int64_t queue_timeout_ns;     // 0: none
    std::atomic<bool> disabled{false};  // the model's outputs cannot be bound before the run
    std::atomic<int64_t> pending{0};    // calls queued or running here (VersionStats.pending adds them)

    // Runs shorter than this (on average) stay on the gRPC thread that read the
    // request: a hand-off to a worker costs two thread switches.
    static constexpr int64_t BRIEF_RUN_NS = 200'000;
    bool runs_briefly() const {
        const int64_t avg = run_ns.load(std::memory_order_relaxed);
        return avg > 0 && avg < BRIEF_RUN_NS;
    }
    void ran(int64_t ns) const {  // a moving average over about the last 8 runs
        const int64_t avg = run_ns.load(std::memory_order_relaxed);
        run_ns.store(avg == 0 ? ns : avg + (ns - avg) / 8, std::memory_order_relaxed);
    }
    mutable std::atomic<int64_t> run_ns{0};  // 0: never ran (the first run goes to a worker)

    // Scheduling: an idle instance runs a job at once; otherwise it waits, FIFO.
    std::mutex mu;
    std::vector<size_t> idle;
    std::deque<Job *> waiting;
    // Calls taken into batches being formed (batch.cpp): they still wait, so they count
    // against max_queue, and a deadline, queue timeout or cancel takes them out of here.
    std::vector<Job *> forming;
    // A job joined `waiting` (a batch being formed may take it), or left `forming`.
    std::condition_variable more;

    // Direct's callers (direct.cpp: the grpcio plane's fast path, and the HTTP lane,
    // which shares the native plane's entries) wait in line here: an instance that
    // frees up goes to whichever came first, the plane's first call or this line's
    // first waiter.
    static constexpr size_t NO_INSTANCE = SIZE_MAX;
    struct Waiter {
        size_t instance = NO_INSTANCE;
        int64_t arrived_ns = 0;
        std::condition_variable handed;
    };
    std::deque<Waiter *> direct_waiting;

    // With `mu` held: hands `instance` to the first waiter of `direct_waiting` if it
    // came before `before_ns` (0: whenever it came); false if none did.
    bool hand_to_waiter(size_t instance, int64_t before_ns) {
        if (direct_waiting.empty()) return false;
        Waiter *first = direct_waiting.front();
        if (before_ns && first->arrived_ns > before_ns) return false;
        direct_waiting.pop_front();
        first->instance = instance;
        first->handed.notify_one();
        return true;
    }
};

// A request counted in `entry.pending` (VersionStats.pending adds it: a drain waits for it)
// while this lives.
class PendingRequest {
  public:
    explicit PendingRequest(ModelEntry &entry) : entry_(entry) { entry_.pending.fetch_add(1); }
    ~PendingRequest() { entry_.pending.fetch_sub(1); }
    PendingRequest(const PendingRequest &) = delete;
    PendingRequest &operator=(const PendingRequest &) = delete;

  private:
    ModelEntry &entry_;
};

// Key: model name, '\n', version number or label ("" for the default version).
using Table = std::unordered_map<std::string, std::shared_ptr<ModelEntry>>;

// The entry of `name` and `version` (a number, a label or "" for the default), or nullptr.
inline std::shared_ptr<ModelEntry> find_entry(const Table &table, std::string_view name, std::string_view version) {
    thread_local std::string key;
    key.assign(name);
    key += '\n';
    key.append(version);
    const auto found = table.find(key);
    return found == table.end() ? nullptr : found->second;
}

// The entry `request` (parsed from `base`) names, or nullptr. The key is built in a
// buffer of the calling thread's, so a lookup allocates nothing once it has grown.
inline std::shared_ptr<ModelEntry> find_entry(const Table &table, const Request &request, const char *base) {
    return find_entry(table, {base + request.model_name.off, request.model_name.len},
                      {base + request.model_version.off, request.model_version.len});
}

}  // namespace icow::plane
