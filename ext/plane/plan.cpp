#include "plan.hpp"

#include <string_view>

namespace icow::plane {
namespace {

std::string_view view(const char *base, Span s) { return {base + s.off, s.len}; }

bool multiply(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_mul_overflow(a, b, out); }

}  // namespace

bool parse_for_plan(const char *base, size_t size, Request *request) {
    try {
        *request = parse_request(base, size);
        return true;
    } catch (const ParseError &) {
        return false;
    }
}

bool plan_request(const ModelSpec &model, const Request &request, const char *base, size_t max_response,
                  Plan *plan, const char *text) {
    const char *names = text ? text : base;
    const auto &inputs = model.inputs;
    const auto &outputs = model.outputs;
    const int64_t max_batch_size = model.max_batch_size;
    if (request.inputs.size() != inputs.size()) return false;
    plan->inputs.assign(inputs.size(), nullptr);
    plan->input_shapes.assign(inputs.size(), {});
    std::vector<int64_t> symbols;
    int64_t batch = -1;
    for (const auto &in : request.inputs) {
        if (in.shared_memory || !in.type) return false;
        const std::string_view in_name = view(names, in.name);
        size_t k = 0;
        while (k < inputs.size() && inputs[k].name != in_name) ++k;
        if (k == inputs.size() || plan->inputs[k] != nullptr) return false;  // unknown or repeated: full path says why
        const TensorSpec &spec = inputs[k];
        if (view(names, in.datatype) != spec.datatype || in.shape.size() != spec.shape.size() || in.count == 0)
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
    plan->outputs.reserve(request.outputs.empty() ? outputs.size() : request.outputs.size());
    if (request.outputs.empty()) {
        for (size_t k = 0; k < outputs.size(); ++k) plan->outputs.push_back(k);
    } else {
        for (const auto &out : request.outputs) {
            for (const auto &p : out.params)  // shared memory (or anything else asked of an output): full path
                if (p.key.len) return false;
            const std::string_view out_name = view(names, out.name);
            size_t k = 0;
            while (k < outputs.size() && outputs[k].name != out_name) ++k;
            if (k == outputs.size()) return false;
            for (size_t seen : plan->outputs)
                if (seen == k) return false;
            plan->outputs.push_back(k);
        }
    }
    plan->response.clear();
    plan->response.reserve(plan->outputs.size());
    for (size_t k : plan->outputs) {
        const TensorSpec &spec = outputs[k];
        OutputSpec o{spec.name, spec.datatype, {}, 0};
        o.shape.reserve(spec.graph.size());
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
