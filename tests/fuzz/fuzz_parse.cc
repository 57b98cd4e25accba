// libFuzzer target for the ModelInferRequest parser (ext/core/parse.cpp) and the native
// plane's fast-path checks (ext/plane/plan.cpp), built with AddressSanitizer and
// UndefinedBehaviorSanitizer by scripts/fuzz.sh. The parser must either return or
// throw ParseError, and the plan must either refuse a request or describe one whose
// inputs lie inside the request with the sizes the model declares: any other
// outcome (a crash, a read outside the input, undefined behaviour, a hang) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "core/parse.hpp"
#include "plane/plan.hpp"

namespace {

using icow::plane::ModelSpec;

// Models shaped like the seeds (tests/fuzz/make_corpus.py: input "x", output "y"):
// with a batch dim and symbolic dims; fixed dims without batching; two inputs.
const ModelSpec *models() {
    static const ModelSpec specs[] = {
        {"m", "1", 8, {{"x", "FP32", 4, {-1, -1}, {-2, -3}}}, {{"y", "FP32", 4, {}, {-2, -3}}}},
        {"m", "1", 0, {{"x", "INT64", 8, {2, 2}, {2, 2}}}, {{"y", "INT64", 8, {}, {2, 2}}, {"z", "BOOL", 1, {}, {4}}}},
        {"m", "1", 0, {{"x", "FP16", 2, {-1}, {-2}}, {"w", "FP16", 2, {-1}, {-2}}}, {{"y", "FP16", 2, {}, {-2}}}},
    };
    return specs;
}

void check_plan(const ModelSpec &model, const icow::Request &request, const char *base, size_t size) {
    icow::plane::Plan plan;
    if (!icow::plane::plan_request(model, request, base, size_t{1} << 20, &plan)) return;
    for (size_t k = 0; k < model.inputs.size(); ++k) {
        uint64_t count = 1;
        for (int64_t d : plan.input_shapes[k]) count *= static_cast<uint64_t>(d);
        const uint64_t bytes = count * model.inputs[k].itemsize;
        const char *data = plan.inputs[k];
        const bool in_request = data >= base && data + bytes <= base + size;
        bool in_typed = false;
        for (const auto &in : request.inputs)
            in_typed |= !in.typed.empty() && data == in.typed.data() && bytes == in.typed.size();
        if (!in_request && !in_typed) __builtin_trap();
        volatile char sink = bytes ? data[bytes - 1] : 0;  // ASan: the last byte is readable
        (void)sink;
    }
    for (const auto &out : plan.response) {
        uint64_t count = 1;
        for (int64_t d : out.shape) count *= static_cast<uint64_t>(d);
        if (count * (out.datatype == "FP32" ? 4 : out.datatype == "FP16" ? 2 : out.datatype == "BOOL" ? 1 : 8) !=
            out.nbytes)
            __builtin_trap();
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    // A copy of exactly `size` bytes: a read past its end is caught by ASan.
    std::unique_ptr<char[]> buffer(new char[size ? size : 1]);
    if (size) std::memcpy(buffer.get(), data, size);
    try {
        icow::Request req = icow::parse_request(buffer.get(), size);
        for (const auto &in : req.inputs)  // spans must lie inside the input
            if (in.has_raw && in.raw.off + in.raw.len > size) __builtin_trap();
        for (int m = 0; m < 3; ++m) check_plan(models()[m], req, buffer.get(), size);
    } catch (const icow::ParseError &) {
    }
    return 0;
}
