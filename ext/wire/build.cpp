// The response as one Python bytes object (layout: core/layout.cpp), written in place.

#include "build.hpp"

#include <cstring>
#include <stdexcept>

#include "core/release_gil.hpp"

namespace py = pybind11;

namespace icow {

ResponseBuffer::ResponseBuffer(const std::string &model_name, const std::string &model_version,
                               const std::string &id, const std::vector<OutputSpec> &outputs) {
    size_ = response_size(model_name, model_version, id, outputs);
    bytes_ = py::reinterpret_steal<py::object>(PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size_)));
    if (!bytes_) throw py::error_already_set();
    offsets_ = write_response(data(), size_, model_name, model_version, id, outputs);
    for (const auto &o : outputs) sizes_.push_back(o.nbytes);
    written_.assign(outputs.size(), false);
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
