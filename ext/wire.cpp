// icow._wire: the compiled part of icow's wire handling.
//
// For now it holds the BYTES tensor codec of the Open Inference Protocol: in raw
// contents, a BYTES tensor is its elements one after another, each a 4-byte
// little-endian length followed by that many bytes. Walking that in Python
// costs a slice and an int.from_bytes per element; here it is one pass.

#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace py = pybind11;

namespace {

// ---------------------------------------------------------------------------
// Reader: a borrowed buffer and a cursor; every read is bounds-checked.
// ---------------------------------------------------------------------------
struct Reader {
    const char *pos;
    const char *end;

    size_t left() const { return static_cast<size_t>(end - pos); }

    bool read_u32le(uint32_t *out) {
        if (left() < 4) return false;
        const auto *b = reinterpret_cast<const unsigned char *>(pos);
        *out = uint32_t(b[0]) | uint32_t(b[1]) << 8 | uint32_t(b[2]) << 16 | uint32_t(b[3]) << 24;
        pos += 4;
        return true;
    }

    bool skip(size_t n, const char **start) {
        if (left() < n) return false;
        *start = pos;
        pos += n;
        return true;
    }
};

void write_u32le(char *dst, uint32_t v) {
    const unsigned char b[4] = {static_cast<unsigned char>(v), static_cast<unsigned char>(v >> 8),
                                static_cast<unsigned char>(v >> 16), static_cast<unsigned char>(v >> 24)};
    std::memcpy(dst, b, 4);
}

// ---------------------------------------------------------------------------
// BYTES tensors
// ---------------------------------------------------------------------------
py::list unpack_bytes(py::buffer data, py::ssize_t count) {
    py::buffer_info info = data.request();
    if (info.ndim != 1 || info.itemsize != 1 || info.strides[0] != 1)
        throw py::value_error("unpack_bytes expects a contiguous byte buffer");
    if (count < 0) throw py::value_error("element count must not be negative");
    Reader r{static_cast<const char *>(info.ptr), static_cast<const char *>(info.ptr) + info.size};
    py::list items(count);
    for (py::ssize_t i = 0; i < count; ++i) {
        uint32_t n;
        const char *start;
        if (!r.read_u32le(&n))
            throw py::value_error("BYTES contents end inside the length prefix of element " +
                                  std::to_string(i) + " of " + std::to_string(count));
        if (!r.skip(n, &start))
            throw py::value_error("BYTES element " + std::to_string(i) + " declares " + std::to_string(n) +
                                  " bytes but only " + std::to_string(r.left()) + " remain");
        items[i] = py::bytes(start, n);
    }
    if (r.left() != 0)
        throw py::value_error("BYTES contents hold " + std::to_string(r.left()) + " bytes after the last of " +
                              std::to_string(count) + " elements");
    return items;
}

py::bytes pack_bytes(const py::iterable &items) {
    // Two passes: measure, then write into one buffer of the exact size.
    std::vector<std::string_view> views;
    std::vector<py::object> keep;  // holds utf-8 encodings of str items alive
    size_t total = 0;
    for (py::handle item : items) {
        char *ptr;
        Py_ssize_t len;
        if (PyUnicode_Check(item.ptr())) {
            py::object enc = py::reinterpret_steal<py::object>(PyUnicode_AsUTF8String(item.ptr()));
            if (!enc) throw py::error_already_set();
            PyBytes_AsStringAndSize(enc.ptr(), &ptr, &len);
            keep.push_back(std::move(enc));
        } else if (PyBytes_Check(item.ptr())) {
            PyBytes_AsStringAndSize(item.ptr(), &ptr, &len);
        } else {
            throw py::type_error("BYTES elements must be bytes or str, got " +
                                 std::string(Py_TYPE(item.ptr())->tp_name));
        }
        if (static_cast<uint64_t>(len) > UINT32_MAX) throw py::value_error("BYTES element larger than 4 GiB");
        views.emplace_back(ptr, static_cast<size_t>(len));
        total += 4 + static_cast<size_t>(len);
    }
    py::bytes out(nullptr, total);
    char *dst = PyBytes_AS_STRING(out.ptr());
    for (const auto &v : views) {
        write_u32le(dst, static_cast<uint32_t>(v.size()));
        std::memcpy(dst + 4, v.data(), v.size());
        dst += 4 + v.size();
    }
    return out;
}

}  // namespace

PYBIND11_MODULE(_wire, m) {
    m.doc() = "icow's compiled wire codec";
    m.def("unpack_bytes", &unpack_bytes, py::arg("data"), py::arg("count"),
          "Split length-prefixed BYTES contents into `count` bytes objects.");
    m.def("pack_bytes", &pack_bytes, py::arg("items"),
          "Join bytes/str items into length-prefixed BYTES contents.");
}
