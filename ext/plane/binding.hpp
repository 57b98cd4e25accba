// An instance's ONNX Runtime binding, kept from run to run. A tensor is bound
// again only where its place or shape changed: onnxruntime's bind call costs
// about 4 µs from C++ through its Python binding. Small requests go through
// staging buffers bound once, because copying a few KiB in and out costs less
// than binding the request's and the response's own places anew each time.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "core/layout.hpp"

namespace py = pybind11;

namespace icow::plane {

class ModelEntry;
struct Instance;

// Requests whose tensors (inputs and outputs) total at most this many bytes are staged.
constexpr size_t STAGE_LIMIT = 16 * 1024;

// Bytes copied into and out of staging buffers since the process started: the only
// copies of tensor data a bound run makes (the tests count them per request).
uint64_t staged_bytes();

// A buffer that only grows; aligned for ONNX Runtime's vectorized kernels.
class StageBuffer {
  public:
    char *reserve(size_t bytes);

  private:
    struct Free {
        void operator()(char *p) const { std::free(p); }
    };
    std::unique_ptr<char, Free> data_;
    size_t capacity_ = 0;
};

// What the binding holds for one tensor.
struct Bound {
    const char *at = nullptr;
    std::vector<int64_t> shape;
};

// Used only by the thread the instance is reserved for, under the GIL.
struct Binding {
    py::object binding, bind_input, bind_output;  // onnxruntime's SessionIOBinding and its methods
    py::object run;                               // the session's run_with_iobinding
    std::vector<Bound> inputs;                    // by spec index
    std::vector<size_t> outputs;                  // the outputs it holds, by spec index
    std::vector<Bound> output_places;             // by spec index
    std::vector<StageBuffer> input_stage, output_stage;

    void drop();  // a binding in an unknown state is not kept
    void release();  // at exit: leaks the Python objects rather than touch a dying interpreter
};

// One ONNX Runtime run with every input and output bound where it lies (output
// i: `results[i].shape` at `base + offsets[i]`), or staged, on the instance's kept
// binding. Call with the GIL held (ONNX Runtime releases it while it computes);
// throws what the binding or the run raised. Returns when the inputs were bound (ns).
int64_t bind_and_run(const ModelEntry &entry, const Instance &instance, const std::vector<const char *> &inputs,
                     const std::vector<std::vector<int64_t>> &input_shapes, const std::vector<size_t> &outputs,
                     const std::vector<OutputSpec> &results, char *base, const std::vector<size_t> &offsets);

// The same, output i written at `places[i]` (an ensemble's step: into the response, or
// into memory the next step reads).
int64_t bind_and_run(const ModelEntry &entry, const Instance &instance, const std::vector<const char *> &inputs,
                     const std::vector<std::vector<int64_t>> &input_shapes, const std::vector<size_t> &outputs,
                     const std::vector<OutputSpec> &results, const std::vector<char *> &places);

}  // namespace icow::plane
