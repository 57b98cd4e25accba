// The protocol's tensor datatypes as the wire code needs them.
#pragma once

#include <cstddef>
#include <string_view>

namespace icow {

// InferTensorContents field numbers.
enum Contents : int {
    NO_CONTENTS = 0,
    BOOL_CONTENTS = 1,
    INT_CONTENTS = 2,
    INT64_CONTENTS = 3,
    UINT_CONTENTS = 4,
    UINT64_CONTENTS = 5,
    FP32_CONTENTS = 6,
    FP64_CONTENTS = 7,
    BYTES_CONTENTS = 8,
};

struct Datatype {
    std::string_view name;
    size_t size;        // bytes per element; 0 for BYTES (length-prefixed elements)
    Contents contents;  // the typed-contents field that carries it
    bool is_signed;
};

inline constexpr Datatype DATATYPES[] = {
    {"BOOL", 1, BOOL_CONTENTS, false},   {"UINT8", 1, UINT_CONTENTS, false},
    {"UINT16", 2, UINT_CONTENTS, false}, {"UINT32", 4, UINT_CONTENTS, false},
    {"UINT64", 8, UINT64_CONTENTS, false}, {"INT8", 1, INT_CONTENTS, true},
    {"INT16", 2, INT_CONTENTS, true},    {"INT32", 4, INT_CONTENTS, true},
    {"INT64", 8, INT64_CONTENTS, true},  {"FP16", 2, NO_CONTENTS, true},
    {"FP32", 4, FP32_CONTENTS, true},    {"FP64", 8, FP64_CONTENTS, true},
    {"BF16", 2, NO_CONTENTS, true},  // raw contents only, as FP16; the bits pass unchanged
    {"BYTES", 0, BYTES_CONTENTS, false},
};

inline const Datatype *find_datatype(std::string_view name) {
    for (const auto &d : DATATYPES)
        if (d.name == name) return &d;
    return nullptr;
}

inline const char *contents_name(int field) {
    static const char *names[] = {"?",  "bool_contents", "int_contents", "int64_contents", "uint_contents",
                                  "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents"};
    return field >= 1 && field <= 8 ? names[field] : "an unknown contents field";
}

}  // namespace icow
