// What the fast path checks and sizes before a run, with no Python: a request
// against a model's declared tensors (the fuzzer runs it on hostile requests).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/layout.hpp"
#include "core/parse.hpp"

namespace icow::plane {

// An input or output as the model declares it.
struct TensorSpec {
    std::string name, datatype;
    size_t itemsize = 0;
    std::vector<int64_t> shape;  // inputs: the request's shape, -1 any size (the batch dim included)
    std::vector<int64_t> graph;  // the ONNX graph's dims: >= 0 fixed, -1 unknown, <= -2 symbol number -2-k
};

struct ModelSpec {
    std::string name, version;
    int64_t max_batch_size = 0;
    std::vector<TensorSpec> inputs, outputs;
};

// What the fast path does with one request.
struct Plan {
    std::vector<const char *> inputs;  // data of each spec input, in spec order
    std::vector<std::vector<int64_t>> input_shapes;
    std::vector<size_t> outputs;       // spec indices, in response order
    std::vector<OutputSpec> response;  // the response's outputs, shapes known before the run
    int64_t rows = 1;                  // batch size (1 for a model without batching)
};

// Parses `size` bytes at `base` into `request`; false where they do not parse
// (the full path then parses them again and says what is wrong).
bool parse_for_plan(const char *base, size_t size, Request *request);

// Fills `plan` and returns true where the fast path can serve `request` (parsed
// from `base`) exactly as icow's full path would; false: hand it to the full
// path (it has the errors, shared memory, strings, shapes known only after the run).
// `text`: where the names' spans point, when not into `base` (HTTP: the tensors lie in
// the body, the names come from its parsed JSON header).
bool plan_request(const ModelSpec &model, const Request &request, const char *base, size_t max_response,
                  Plan *plan, const char *text = nullptr);

}  // namespace icow::plane
