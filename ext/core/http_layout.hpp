// The answer of Triton's binary tensor extension over HTTP: a JSON header, then each
// output's bytes in order. Written byte for byte as icow.http.infer.Answer writes it
// (orjson's compact form), so that both paths answer alike. No Python here.
#pragma once

#include <string>
#include <vector>

#include "layout.hpp"

namespace icow {

// The JSON header of an answer whose outputs are all binary.
std::string http_header(const std::string &model_name, const std::string &model_version, const std::string &id,
                        const std::vector<OutputSpec> &outputs);

// `text` as a JSON string, quotes included (control characters, quote and backslash escaped).
void append_json_string(std::string *out, const std::string &text);

}  // namespace icow
