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

#include "../layout.hpp"
#include "../parse.hpp"

namespace py = pybind11;

namespace icow::plane {

class Call;

// An input or output as the model declares it.
struct TensorSpec {
    std::string name, datatype;
    size_t itemsize = 0;
    std::vector<int64_t> shape;  // inputs: the request's shape, -1 any size (the batch dim included)
    std::vector<int64_t> graph;  // the ONNX graph's dims: >= 0 fixed, -1 unknown, <= -2 symbol number -2-k
    py::object py_name, py_type;  // for ONNX Runtime's bind calls: str, numpy scalar type
};

// One ONNX Runtime session: the objects beneath onnxruntime's Python wrapper.
struct Instance {
    py::object session, new_binding, device;
};

// What the fast path does with one request (plan_request).
struct Plan {
    std::vector<const char *> inputs;  // data of each spec input, in spec order
    std::vector<std::vector<int64_t>> input_shapes;
    std::vector<size_t> outputs;       // spec indices, in response order
    std::vector<OutputSpec> response;  // the response's outputs, shapes known before the run
    int64_t rows = 1;                  // batch size (1 for a model without batching)
};

class ModelEntry {
  public:
    ModelEntry(std::string name, int64_t version, int64_t max_batch_size, const py::list &inputs,
               const py::list &outputs, const py::list &instances, py::object record, py::object record_failure,
               size_t max_queue, int64_t queue_timeout_ns);
    ~ModelEntry();
    ModelEntry(const ModelEntry &) = delete;
    ModelEntry &operator=(const ModelEntry &) = delete;

    // Fills `plan` and returns true where the fast path can serve `request`
    // exactly as icow's full path would; false: hand it to the full path
    // (it has the errors, shared memory, strings, shapes known only after the run).
    bool plan_request(const Request &request, const char *base, size_t max_response, Plan *plan) const;

    const std::string name, version;
    const int64_t max_batch_size;
    std::vector<TensorSpec> inputs, outputs;
    std::vector<Instance> instances;
    py::object record, record_failure;  // VersionStats.record_request / record_failure
    const size_t max_queue;             // 0: no bound
    const int64_t queue_timeout_ns;     // 0: none
    std::atomic<bool> disabled{false};  // a bound run failed: the graph's declared dims are wrong

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
