// The ModelInferRequest parser: protobuf wire bytes to spans and numbers, with
// no Python objects and no copies of tensor data (typed contents excepted: they
// are gathered into one buffer per input, as raw contents would have been).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "datatypes.hpp"
#include "reader.hpp"

namespace icow {

// One InferParameter: the oneof's choice and value.
struct Param {
    Span key;
    enum Kind { NONE, BOOL, INT64, STRING, DOUBLE, UINT64 } kind = NONE;
    int64_t i = 0;  // bool and int64
    uint64_t u = 0;
    double d = 0;
    Span s;
};

struct InputTensor {
    Span name, datatype;
    std::vector<int64_t> shape;
    std::vector<Param> params;
    std::vector<Span> contents;  // every InferTensorContents occurrence (protobuf merges them)
    // Filled by check_and_gather:
    const Datatype *type = nullptr;
    uint64_t count = 0;        // elements
    Span raw;                  // raw_input_contents entry, when used
    bool has_raw = false;
    bool shared_memory = false;  // parameters name a shared_memory_region: no contents in the message
    std::string typed;         // typed contents in raw layout
};

struct OutputTensor {
    Span name;
    std::vector<Param> params;
};

struct Request {
    Span model_name, model_version, id;
    std::vector<Param> params;
    std::vector<InputTensor> inputs;
    std::vector<OutputTensor> outputs;
    std::vector<Span> raw;
};

// Parse and check a serialized ModelInferRequest of n bytes. Throws ParseError
// with a message for the client. Touches no Python state: call without the GIL.
Request parse_request(const char *data, size_t n);

}  // namespace icow
