// What the fast path checks and sizes before a run, with no Python: a request
// against a model's declared tensors (the fuzzer runs it on hostile requests).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
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

// The sizes the graph's symbolic dims take in one request (-1: not bound yet).
using Symbols = std::vector<int64_t>;

// Checks input `k` of `model` (as the fast path would serve it: a datatype, a shape the
// spec allows, a batch size the model takes) and binds the graph's symbols to its dims.
// `batch`: the rows of the inputs so far (-1: none yet).
bool check_input(const ModelSpec &model, size_t k, std::string_view datatype, const std::vector<int64_t> &shape,
                 Symbols *symbols, int64_t *batch);

// Output `spec`'s shape and size from the symbols the inputs bound; false where a dim is
// not known before the run or it would exceed `max_response` bytes.
bool size_output(const TensorSpec &spec, const Symbols &symbols, size_t max_response, OutputSpec *out);

// The inputs (`plan->inputs`, shapes, rows, `symbols`) and outputs asked for
// (`plan->outputs`) of `request`; false: the full path serves it. plan_request is this,
// then each output sized; an ensemble sizes its outputs by running its graph's plans.
bool plan_inputs_and_outputs(const ModelSpec &model, const Request &request, const char *base, Plan *plan,
                             Symbols *symbols, const char *text = nullptr);

// Fills `plan` and returns true where the fast path can serve `request` (parsed
// from `base`) exactly as icow's full path would; false: hand it to the full
// path (it has the errors, shared memory, strings, shapes known only after the run).
// `text`: where the names' spans point, when not into `base` (HTTP: the tensors lie in
// the body, the names come from its parsed JSON header).
bool plan_request(const ModelSpec &model, const Request &request, const char *base, size_t max_response,
                  Plan *plan, const char *text = nullptr);

}  // namespace icow::plane
