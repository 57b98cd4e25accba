// The model table of the native plane: what Python publishes of each ready
// model version, enough for C++ to check a request, size its response and
// bind both to ONNX Runtime, with no Python on the lookup.
#pragma once

#include <pybind11/pybind11.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "plan.hpp"

namespace py = pybind11;

namespace icow::plane {

class Call;

// The Python objects ONNX Runtime's bind calls take for one tensor: its name, its numpy type.
struct BindNames {
    py::object name, type;
};

// One ONNX Runtime session: the objects beneath onnxruntime's Python wrapper.
struct Instance {
    py::object session, new_binding, device;
};

class ModelEntry {
  public:
    ModelEntry(std::string name, int64_t version, int64_t max_batch_size, const py::list &inputs,
               const py::list &outputs, const py::list &instances, py::object record, py::object record_failure,
               size_t max_queue, int64_t queue_timeout_ns);
    ~ModelEntry();
    ModelEntry(const ModelEntry &) = delete;
    ModelEntry &operator=(const ModelEntry &) = delete;

    bool plan(const Request &request, const char *base, size_t max_response, Plan *plan) const {
        return !disabled.load(std::memory_order_relaxed) && plan_request(spec, request, base, max_response, plan);
    }

    ModelSpec spec;
    std::vector<BindNames> input_names, output_names;  // index-aligned with spec.inputs, spec.outputs
    std::vector<Instance> instances;
    py::object record, record_failure;  // VersionStats.record_request / record_failure
    const size_t max_queue;             // 0: no bound
    const int64_t queue_timeout_ns;     // 0: none
    std::atomic<bool> disabled{false};  // the model's outputs cannot be bound before the run
    std::atomic<int64_t> pending{0};    // calls queued or running here (VersionStats.pending adds them)

    // Scheduling: an idle instance runs a job at once; otherwise it waits, FIFO.
    std::mutex mu;
    std::vector<size_t> idle;
    std::deque<Call *> waiting;
};

// Key: model name, '\n', version number or label ("" for the default version).
using Table = std::unordered_map<std::string, std::shared_ptr<ModelEntry>>;

inline std::string table_key(std::string_view name, std::string_view version) {
    std::string key(name);
    key += '\n';
    key += version;
    return key;
}

}  // namespace icow::plane
