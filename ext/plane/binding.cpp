#include "binding.hpp"

#include <atomic>
#include <cstring>

#include "core/clock.hpp"
#include "models.hpp"

namespace icow::plane {
namespace {

// ---- Binding one tensor ---------------------------------------------------
// Names of onnxruntime's C binding methods, made once (under the GIL).
struct Names {
    py::str bind_input{"bind_input"}, bind_output{"bind_output"}, clear_outputs{"clear_binding_outputs"},
        run{"run_with_iobinding"};
};
std::atomic<uint64_t> staged_total{0};

const Names &names() {
    static const Names *n = new Names();  // never freed: outlives the interpreter's last use
    return *n;
}

py::tuple dims(const std::vector<int64_t> &shape) {
    py::tuple t(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) t[i] = py::int_(shape[i]);
    return t;
}

size_t input_bytes(const ModelEntry &entry, size_t k, const std::vector<int64_t> &shape) {
    size_t n = entry.spec.inputs[k].itemsize;
    for (const int64_t d : shape) n *= static_cast<size_t>(d);
    return n;
}

// Bind `name` to `at` unless the binding holds it there with this shape already.
void bind_once(const py::object &method, const BindNames &name, const py::object &device, const char *at,
          const std::vector<int64_t> &shape, Bound *held) {
    if (held->at == at && held->shape == shape) return;
    held->at = nullptr;  // unknown until the call below returns
    method(name.name, device, name.type, dims(shape), reinterpret_cast<uintptr_t>(at));
    held->at = at;
    held->shape = shape;
}

}  // namespace

uint64_t staged_bytes() { return staged_total.load(std::memory_order_relaxed); }

// ---- The binding kept from run to run -------------------------------------
char *StageBuffer::reserve(size_t bytes) {
    constexpr size_t ALIGN = 64;
    if (!data_ || bytes > capacity_) {
        const size_t capacity = std::max(ALIGN, (bytes + ALIGN - 1) / ALIGN * ALIGN);
        data_.reset(static_cast<char *>(std::aligned_alloc(ALIGN, capacity)));
        if (!data_) throw std::bad_alloc();
        capacity_ = capacity;
    }
    return data_.get();
}

void Binding::drop() {
    binding = bind_input = bind_output = run = py::object();
    inputs.clear();
    outputs.clear();
    output_places.clear();
}

void Binding::release() {
    binding.release(), bind_input.release(), bind_output.release(), run.release();
}

// ---- The bound run --------------------------------------------------------
int64_t bind_and_run(const ModelEntry &entry, const Instance &instance, const std::vector<const char *> &inputs,
                     const std::vector<std::vector<int64_t>> &input_shapes, const std::vector<size_t> &outputs,
                     const std::vector<OutputSpec> &results, char *base, const std::vector<size_t> &offsets) {
    thread_local std::vector<char *> places;
    places.clear();
    for (const size_t offset : offsets) places.push_back(base + offset);
    return bind_and_run(entry, instance, inputs, input_shapes, outputs, results, places);
}

int64_t bind_and_run(const ModelEntry &entry, const Instance &instance, const std::vector<const char *> &inputs,
                     const std::vector<std::vector<int64_t>> &input_shapes, const std::vector<size_t> &outputs,
                     const std::vector<OutputSpec> &results, const std::vector<char *> &places) {
    const Names &n = names();
    Binding &b = instance.binding;
    if (!b.binding) {
        b.binding = instance.new_binding(instance.session);
        b.bind_input = b.binding.attr(n.bind_input);
        b.bind_output = b.binding.attr(n.bind_output);
        b.run = instance.session.attr(n.run);
        b.inputs.assign(entry.spec.inputs.size(), {});
        b.input_stage.resize(entry.spec.inputs.size());
        b.output_stage.resize(entry.spec.outputs.size());
    }
    size_t total = 0;
    for (size_t k = 0; k < inputs.size(); ++k) total += input_bytes(entry, k, input_shapes[k]);
    for (const auto &r : results) total += r.nbytes;
    const bool staged = total <= STAGE_LIMIT;
    try {
        // Binding a name again replaces what it held; an output of the last run that this
        // one does not ask for must go, or the run would write it where that one was.
        if (b.outputs != outputs) {
            if (!b.outputs.empty()) b.binding.attr(n.clear_outputs)();
            b.outputs.clear();
            b.output_places.assign(entry.spec.outputs.size(), {});
        }
        for (size_t k = 0; k < inputs.size(); ++k) {
            const char *at = inputs[k];
            if (staged) {
                const size_t size = input_bytes(entry, k, input_shapes[k]);
                char *stage = b.input_stage[k].reserve(size);
                std::memcpy(stage, inputs[k], size);
                at = stage;
            }
            bind_once(b.bind_input, entry.input_names[k], instance.device, at, input_shapes[k], &b.inputs[k]);
        }
        for (size_t i = 0; i < outputs.size(); ++i) {
            const size_t o = outputs[i];
            const char *at = staged ? b.output_stage[o].reserve(results[i].nbytes) : places[i];
            bind_once(b.bind_output, entry.output_names[o], instance.device, at, results[i].shape,
                      &b.output_places[o]);
        }
        b.outputs = outputs;
        const int64_t fed = now_ns();
        b.run(b.binding, instance.run_options);
        if (staged) {
            for (size_t i = 0; i < outputs.size(); ++i)
                std::memcpy(places[i], b.output_places[outputs[i]].at, results[i].nbytes);
            staged_total.fetch_add(total, std::memory_order_relaxed);
        }
        return fed;
    } catch (...) {
        b.drop();
        throw;
    }
}

}  // namespace icow::plane
