// The ModelInferResponse wire layout, shared by the builder (icow._wire) and
// the native data plane (icow._plane). No Python here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace icow {

struct OutputSpec {
    std::string name, datatype;
    std::vector<int64_t> shape;
    size_t nbytes;
};

// Bytes of the serialized response, raw output contents included.
size_t response_size(const std::string &model_name, const std::string &model_version, const std::string &id,
                     const std::vector<OutputSpec> &outputs);

// Write the response into dst (`size` bytes, from response_size()) except the
// outputs' raw contents; returns where each output's contents go (offsets from dst).
std::vector<size_t> write_response(char *dst, size_t size, const std::string &model_name,
                                   const std::string &model_version, const std::string &id,
                                   const std::vector<OutputSpec> &outputs);

}  // namespace icow
