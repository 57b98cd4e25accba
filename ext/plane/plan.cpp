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

bool check_input(const ModelSpec &model, size_t k, std::string_view datatype, const std::vector<int64_t> &shape,
                 Symbols *symbols, int64_t *batch) {
    const TensorSpec &spec = model.inputs[k];
    if (datatype != spec.datatype || shape.size() != spec.shape.size() || spec.graph.size() != shape.size())
        return false;
    for (size_t d = 0; d < shape.size(); ++d)
        if (spec.shape[d] != -1 && spec.shape[d] != shape[d]) return false;
    if (model.max_batch_size > 0) {
        const int64_t rows = shape[0];
        if (rows < 1 || rows > model.max_batch_size || (*batch != -1 && rows != *batch)) return false;
        *batch = rows;
    }
    for (size_t d = 0; d < spec.graph.size(); ++d) {  // bind the graph's symbolic dims
        if (spec.graph[d] > -2) continue;
        const size_t s = static_cast<size_t>(-2 - spec.graph[d]);
        if (symbols->size() <= s) symbols->resize(s + 1, -1);
        if ((*symbols)[s] == -1) (*symbols)[s] = shape[d];
        else if ((*symbols)[s] != shape[d]) return false;
    }
    return true;
}

bool size_output(const TensorSpec &spec, const Symbols &symbols, size_t max_response, OutputSpec *out) {
    *out = OutputSpec{spec.name, spec.datatype, {}, 0};
    out->shape.reserve(spec.graph.size());
    uint64_t count = 1;
    for (int64_t d : spec.graph) {
        int64_t size = d;
        if (d <= -2) {
            const size_t s = static_cast<size_t>(-2 - d);
            size = s < symbols.size() ? symbols[s] : -1;
        }
        if (size <= 0 || !multiply(count, static_cast<uint64_t>(size), &count)) return false;
        out->shape.push_back(size);
    }
    if (!multiply(count, spec.itemsize, &count) || count > max_response) return false;
    out->nbytes = count;
    return true;
}

bool plan_inputs_and_outputs(const ModelSpec &model, const Request &request, const char *base, Plan *plan,
                             Symbols *symbols, const char *text) {
    const char *names = text ? text : base;
    const auto &inputs = model.inputs;
    const auto &outputs = model.outputs;
    if (request.inputs.size() != inputs.size()) return false;
    plan->inputs.assign(inputs.size(), nullptr);
    plan->input_shapes.assign(inputs.size(), {});
    symbols->clear();
    int64_t batch = -1;
    for (const auto &in : request.inputs) {
        if (in.shared_memory || !in.type || in.count == 0) return false;
        const std::string_view in_name = view(names, in.name);
        size_t k = 0;
        while (k < inputs.size() && inputs[k].name != in_name) ++k;
        if (k == inputs.size() || plan->inputs[k] != nullptr) return false;  // unknown or repeated: full path says why
        if (!check_input(model, k, view(names, in.datatype), in.shape, symbols, &batch)) return false;
        plan->inputs[k] = in.has_raw ? base + in.raw.off : in.typed.data();
        plan->input_shapes[k] = in.shape;
    }
    plan->rows = model.max_batch_size > 0 ? batch : 1;

    plan->outputs.clear();
    plan->outputs.reserve(request.outputs.empty() ? outputs.size() : request.outputs.size());
    if (request.outputs.empty()) {
        for (size_t k = 0; k < outputs.size(); ++k) plan->outputs.push_back(k);
        return true;
    }
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
    return true;
}

bool plan_request(const ModelSpec &model, const Request &request, const char *base, size_t max_response,
                  Plan *plan, const char *text) {
    Symbols symbols;
    if (!plan_inputs_and_outputs(model, request, base, plan, &symbols, text)) return false;
    plan->response.resize(plan->outputs.size());
    for (size_t i = 0; i < plan->outputs.size(); ++i)
        if (!size_output(model.outputs[plan->outputs[i]], symbols, max_response, &plan->response[i])) return false;
    return true;
}

}  // namespace icow::plane
