// ModelInferResponse wire format (proto/inference.proto):
//   1 model_name, 2 model_version, 3 id: string
//   5 outputs: InferOutputTensor { 1 name, 2 datatype: string; 3 shape: packed int64 }
//   6 raw_output_contents: bytes, one per output, in the order of `outputs`
// Empty strings and shapes are left out, as protobuf does; every raw entry is
// written, empty or not, so that it stays index-aligned with `outputs`.

#include "build.hpp"

#include <cstring>
#include <stdexcept>

#include "reader.hpp"

namespace py = pybind11;

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

ResponseBuffer::ResponseBuffer(const std::string &model_name, const std::string &model_version,
                               const std::string &id, const std::vector<OutputSpec> &outputs) {
    size_ = string_field_size(model_name) + string_field_size(model_version) + string_field_size(id);
    for (const auto &o : outputs) {
        const size_t t = tensor_size(o);
        size_ += 1 + varint_size(t) + t;
    }
    for (const auto &o : outputs) size_ += 1 + varint_size(o.nbytes) + o.nbytes;

    bytes_ = py::reinterpret_steal<py::object>(PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size_)));
    if (!bytes_) throw py::error_already_set();
    char *dst = data();
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
    for (const auto &o : outputs) {
        dst = write_varint(dst, key(6, LEN));
        dst = write_varint(dst, o.nbytes);
        offsets_.push_back(static_cast<size_t>(dst - data()));
        sizes_.push_back(o.nbytes);
        dst += o.nbytes;
    }
    written_.assign(outputs.size(), false);
    if (static_cast<size_t>(dst - data()) != size_) throw std::logic_error("response size miscounted");
}

char *ResponseBuffer::data() const {
    if (!bytes_) throw py::value_error("the response was already finished");
    return PyBytes_AS_STRING(bytes_.ptr());
}

void ResponseBuffer::check_slot(size_t i) const {
    if (i >= offsets_.size())
        throw py::index_error("output " + std::to_string(i) + " of " + std::to_string(offsets_.size()));
}

uintptr_t ResponseBuffer::address(size_t i) const {
    check_slot(i);
    return reinterpret_cast<uintptr_t>(data() + offsets_[i]);
}

void ResponseBuffer::write(size_t i, const py::buffer &source) {
    check_slot(i);
    py::buffer_info info = source.request();
    const size_t n = static_cast<size_t>(info.size * info.itemsize);
    if (n != sizes_[i])
        throw py::value_error("output " + std::to_string(i) + " has " + std::to_string(sizes_[i]) +
                              " bytes, got " + std::to_string(n));
    bool contiguous = true;  // C order: each stride is the product of the later dims
    py::ssize_t expected = info.itemsize;
    for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
        if (info.shape[d] > 1 && info.strides[d] != expected) contiguous = false;
        expected *= info.shape[d];
    }
    if (!contiguous) throw py::value_error("output data must be C-contiguous");
    char *dst = data() + offsets_[i];
    if (n >= RELEASE_GIL_BYTES) {
        py::gil_scoped_release release;
        std::memcpy(dst, info.ptr, n);
    } else {
        std::memcpy(dst, info.ptr, n);
    }
    written_[i] = true;
}

void ResponseBuffer::mark_written(size_t i) {
    check_slot(i);
    written_[i] = true;
}

py::bytes ResponseBuffer::finish() {
    data();  // throws when finished already
    for (size_t i = 0; i < written_.size(); ++i)
        if (!written_[i])  // an unwritten slot would send uninitialized memory
            throw py::value_error("output " + std::to_string(i) + " was never written");
    py::object out = std::move(bytes_);
    bytes_ = py::object();
    return py::reinterpret_borrow<py::bytes>(out);
}

}  // namespace icow
