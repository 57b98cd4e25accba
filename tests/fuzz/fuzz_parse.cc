// libFuzzer target for the ModelInferRequest parser (ext/parse.cpp), built with
// AddressSanitizer and UndefinedBehaviorSanitizer by scripts/fuzz.sh. The parser
// must either return or throw ParseError: any other outcome (a crash, a read
// outside the input, undefined behaviour, a hang) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "parse.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    // A copy of exactly `size` bytes: a read past its end is caught by ASan.
    std::unique_ptr<char[]> buffer(new char[size ? size : 1]);
    if (size) std::memcpy(buffer.get(), data, size);
    try {
        icow::Request req = icow::parse_request(buffer.get(), size);
        for (const auto &in : req.inputs)  // spans must lie inside the input
            if (in.has_raw && in.raw.off + in.raw.len > size) __builtin_trap();
    } catch (const icow::ParseError &) {
    }
    return 0;
}
