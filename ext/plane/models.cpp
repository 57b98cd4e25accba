#include "models.hpp"

#include <limits>
#include <string_view>

#include "gil.hpp"

namespace icow::plane {
namespace {

std::vector<int64_t> int_list(const py::handle &seq) {
    std::vector<int64_t> out;
    for (auto item : seq) out.push_back(item.cast<int64_t>());
    return out;
}

// (name, datatype, itemsize, shape, graph dims, numpy type)
TensorSpec tensor_spec(const py::handle &item) {
    auto t = item.cast<py::tuple>();
    TensorSpec spec;
    spec.name = t[0].cast<std::string>();
    spec.datatype = t[1].cast<std::string>();
    spec.itemsize = t[2].cast<size_t>();
    spec.shape = int_list(t[3]);
    spec.graph = int_list(t[4]);
    spec.py_name = py::str(spec.name);
    spec.py_type = py::reinterpret_borrow<py::object>(t[5]);
    return spec;
}

std::string_view view(const char *base, Span s) { return {base + s.off, s.len}; }

bool multiply(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_mul_overflow(a, b, out); }

}  // namespace

ModelEntry::ModelEntry(std::string name_, int64_t version_, int64_t max_batch_size_, const py::list &inputs_,
                       const py::list &outputs_, const py::list &instances_, py::object record_,
                       py::object record_failure_, size_t max_queue_, int64_t queue_timeout_ns_)
    : name(std::move(name_)), version(std::to_string(version_)), max_batch_size(max_batch_size_),
      record(std::move(record_)), record_failure(std::move(record_failure_)), max_queue(max_queue_),
      queue_timeout_ns(queue_timeout_ns_) {
    for (auto item : inputs_) inputs.push_back(tensor_spec(item));
    for (auto item : outputs_) outputs.push_back(tensor_spec(item));
    for (auto item : instances_) {
        auto t = item.cast<py::tuple>();
        instances.push_back({py::reinterpret_borrow<py::object>(t[0]), py::reinterpret_borrow<py::object>(t[1]),
                             py::reinterpret_borrow<py::object>(t[2])});
    }
    for (size_t i = instances.size(); i-- > 0;) idle.push_back(i);
}

ModelEntry::~ModelEntry() {
    if (!python_alive()) {  // at exit: leak the Python objects rather than touch a dying interpreter
        for (auto *specs : {&inputs, &outputs})
            for (auto &s : *specs) s.py_name.release(), s.py_type.release();
        for (auto &i : instances) i.session.release(), i.new_binding.release(), i.device.release();
        record.release(), record_failure.release();
        return;
    }
    Gil gil;  // the last reference may go on a thread that does not hold it
    inputs.clear();
    outputs.clear();
    instances.clear();
    record = py::object();
    record_failure = py::object();
}

bool ModelEntry::plan_request(const Request &request, const char *base, size_t max_response, Plan *plan) const {
    if (disabled.load(std::memory_order_relaxed) || request.inputs.size() != inputs.size()) return false;
    plan->inputs.assign(inputs.size(), nullptr);
    plan->input_shapes.assign(inputs.size(), {});
    std::vector<int64_t> symbols;
    int64_t batch = -1;
    for (const auto &in : request.inputs) {
        if (in.shared_memory || !in.type) return false;
        const std::string_view in_name = view(base, in.name);
        size_t k = 0;
        while (k < inputs.size() && inputs[k].name != in_name) ++k;
        if (k == inputs.size() || plan->inputs[k] != nullptr) return false;  // unknown or repeated: full path says why
        const TensorSpec &spec = inputs[k];
        if (view(base, in.datatype) != spec.datatype || in.shape.size() != spec.shape.size() || in.count == 0)
            return false;
        for (size_t d = 0; d < in.shape.size(); ++d)
            if (spec.shape[d] != -1 && spec.shape[d] != in.shape[d]) return false;
        if (max_batch_size > 0) {
            const int64_t rows = in.shape[0];
            if (rows < 1 || rows > max_batch_size || (batch != -1 && rows != batch)) return false;
            batch = rows;
        }
        if (spec.graph.size() != in.shape.size()) return false;
        for (size_t d = 0; d < spec.graph.size(); ++d) {  // bind the graph's symbolic dims
            if (spec.graph[d] > -2) continue;
            const size_t s = static_cast<size_t>(-2 - spec.graph[d]);
            if (symbols.size() <= s) symbols.resize(s + 1, -1);
            if (symbols[s] == -1) symbols[s] = in.shape[d];
            else if (symbols[s] != in.shape[d]) return false;
        }
        plan->inputs[k] = in.has_raw ? base + in.raw.off : in.typed.data();
        plan->input_shapes[k] = in.shape;
    }
    plan->rows = max_batch_size > 0 ? batch : 1;

    plan->outputs.clear();
    if (request.outputs.empty()) {
        for (size_t k = 0; k < outputs.size(); ++k) plan->outputs.push_back(k);
    } else {
        for (const auto &out : request.outputs) {
            for (const auto &p : out.params)  // shared memory (or anything else asked of an output): full path
                if (p.key.len) return false;
            const std::string_view out_name = view(base, out.name);
            size_t k = 0;
            while (k < outputs.size() && outputs[k].name != out_name) ++k;
            if (k == outputs.size()) return false;
            for (size_t seen : plan->outputs)
                if (seen == k) return false;
            plan->outputs.push_back(k);
        }
    }
    plan->response.clear();
    for (size_t k : plan->outputs) {
        const TensorSpec &spec = outputs[k];
        OutputSpec o{spec.name, spec.datatype, {}, 0};
        uint64_t count = 1;
        for (int64_t d : spec.graph) {
            int64_t size = d;
            if (d <= -2) {
                const size_t s = static_cast<size_t>(-2 - d);
                size = s < symbols.size() ? symbols[s] : -1;
            }
            if (size <= 0 || !multiply(count, static_cast<uint64_t>(size), &count)) return false;
            o.shape.push_back(size);
        }
        if (!multiply(count, spec.itemsize, &count) || count > max_response) return false;
        o.nbytes = count;
        plan->response.push_back(std::move(o));
    }
    return true;
}

}  // namespace icow::plane
