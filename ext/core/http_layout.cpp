#include "http_layout.hpp"

#include <cstdio>

namespace icow {

void append_json_string(std::string *out, const std::string &text) {
    out->push_back('"');
    for (const unsigned char c : text) {
        switch (c) {
            case '"': *out += "\\\""; break;
            case '\\': *out += "\\\\"; break;
            case '\b': *out += "\\b"; break;
            case '\f': *out += "\\f"; break;
            case '\n': *out += "\\n"; break;
            case '\r': *out += "\\r"; break;
            case '\t': *out += "\\t"; break;
            default:
                if (c < 0x20) {
                    char escaped[8];
                    std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
                    *out += escaped;
                } else {
                    out->push_back(static_cast<char>(c));  // UTF-8 passes as it is
                }
        }
    }
    out->push_back('"');
}

std::string http_header(const std::string &model_name, const std::string &model_version, const std::string &id,
                        const std::vector<OutputSpec> &outputs) {
    std::string out = "{\"model_name\":";
    append_json_string(&out, model_name);
    out += ",\"model_version\":";
    append_json_string(&out, model_version);
    if (!id.empty()) {
        out += ",\"id\":";
        append_json_string(&out, id);
    }
    out += ",\"outputs\":[";
    for (size_t i = 0; i < outputs.size(); ++i) {
        const OutputSpec &o = outputs[i];
        out += i ? ",{\"name\":" : "{\"name\":";
        append_json_string(&out, o.name);
        out += ",\"datatype\":";
        append_json_string(&out, o.datatype);
        out += ",\"shape\":[";
        for (size_t d = 0; d < o.shape.size(); ++d) {
            if (d) out.push_back(',');
            out += std::to_string(o.shape[d]);
        }
        out += "],\"parameters\":{\"binary_data_size\":" + std::to_string(o.nbytes) + "}}";
    }
    out += "]}";
    return out;
}

}  // namespace icow
