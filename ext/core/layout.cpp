// ModelInferResponse wire format (proto/inference.proto):
//   1 model_name, 2 model_version, 3 id: string
//   5 outputs: InferOutputTensor { 1 name, 2 datatype: string; 3 shape: packed int64 }
//   6 raw_output_contents: bytes, one per output, in the order of `outputs`
// Empty strings and shapes are left out, as protobuf does; every raw entry is
// written, empty or not, so that it stays index-aligned with `outputs`.

#include "layout.hpp"

#include <cstring>
#include <stdexcept>

#include "reader.hpp"

namespace icow {
namespace {

size_t string_field_size(const std::string &s) { return s.empty() ? 0 : 1 + varint_size(s.size()) + s.size(); }

char *write_string_field(char *dst, uint32_t field, const std::string &s) {
    if (s.empty()) return dst;
    dst = write_varint(dst, key(field, LEN));
    dst = write_varint(dst, s.size());
    std::memcpy(dst, s.data(), s.size());
    return dst + s.size();
}

size_t packed_shape_size(const std::vector<int64_t> &shape) {
    size_t n = 0;
    for (int64_t d : shape) n += varint_size(static_cast<uint64_t>(d));
    return n;
}

size_t tensor_size(const OutputSpec &o) {
    const size_t packed = packed_shape_size(o.shape);
    return string_field_size(o.name) + string_field_size(o.datatype) +
           (o.shape.empty() ? 0 : 1 + varint_size(packed) + packed);
}

}  // namespace

size_t response_size(const std::string &model_name, const std::string &model_version, const std::string &id,
                     const std::vector<OutputSpec> &outputs) {
    size_t size = string_field_size(model_name) + string_field_size(model_version) + string_field_size(id);
    for (const auto &o : outputs) {
        const size_t t = tensor_size(o);
        size += 1 + varint_size(t) + t;
    }
    for (const auto &o : outputs) size += 1 + varint_size(o.nbytes) + o.nbytes;
    return size;
}

std::vector<size_t> write_response(char *dst, size_t size, const std::string &model_name,
                                   const std::string &model_version, const std::string &id,
                                   const std::vector<OutputSpec> &outputs) {
    char *const start = dst;
    dst = write_string_field(dst, 1, model_name);
    dst = write_string_field(dst, 2, model_version);
    dst = write_string_field(dst, 3, id);
    for (const auto &o : outputs) {
        dst = write_varint(dst, key(5, LEN));
        dst = write_varint(dst, tensor_size(o));
        dst = write_string_field(dst, 1, o.name);
        dst = write_string_field(dst, 2, o.datatype);
        if (!o.shape.empty()) {
            dst = write_varint(dst, key(3, LEN));
            dst = write_varint(dst, packed_shape_size(o.shape));
            for (int64_t d : o.shape) dst = write_varint(dst, static_cast<uint64_t>(d));
        }
    }
    std::vector<size_t> offsets;
    for (const auto &o : outputs) {
        dst = write_varint(dst, key(6, LEN));
        dst = write_varint(dst, o.nbytes);
        offsets.push_back(static_cast<size_t>(dst - start));
        dst += o.nbytes;
    }
    if (static_cast<size_t>(dst - start) != size) throw std::logic_error("response size miscounted");
    return offsets;
}

}  // namespace icow
