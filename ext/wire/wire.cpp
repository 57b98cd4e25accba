// icow._wire: the compiled part of icow's wire handling. This file is the
// Python face: the request parser (core/parse.cpp) and response builder (build.cpp)
// exposed to Python, and the BYTES tensor codec.
//
// In raw contents a BYTES tensor is its elements one after another, each a
// 4-byte little-endian length followed by that many bytes.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "build.hpp"
#include "core/parse.hpp"
#include "core/release_gil.hpp"
#include "sigbus.hpp"

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace py = pybind11;
using icow::Reader;

namespace {

// ---- BYTES tensors --------------------------------------------------------
void write_u32le(char *dst, uint32_t v) {
    const unsigned char b[4] = {static_cast<unsigned char>(v), static_cast<unsigned char>(v >> 8),
                                static_cast<unsigned char>(v >> 16), static_cast<unsigned char>(v >> 24)};
    std::memcpy(dst, b, 4);
}

py::list unpack_bytes(py::buffer data, py::ssize_t count) {
    py::buffer_info info = data.request();
    if (info.ndim != 1 || info.itemsize != 1 || info.strides[0] != 1)
        throw py::value_error("unpack_bytes expects a contiguous byte buffer");
    if (count < 0) throw py::value_error("element count must not be negative");
    // Each element has a 4-byte length prefix: a count the data cannot hold is refused before
    // the list is made (a shape's count of billions would allocate, and free, gigabytes).
    if (static_cast<size_t>(count) > static_cast<size_t>(info.size) / 4)
        throw py::value_error(std::to_string(count) + " BYTES elements need at least " +
                              std::to_string(static_cast<unsigned long long>(count) * 4) + " bytes, got " +
                              std::to_string(info.size));
    Reader r(static_cast<const char *>(info.ptr), static_cast<size_t>(info.size));
    py::list items(count);
    for (py::ssize_t i = 0; i < count; ++i) {
        if (r.left() < 4)
            throw py::value_error("BYTES contents end inside the length prefix of element " +
                                  std::to_string(i) + " of " + std::to_string(count));
        const uint32_t n = r.fixed<uint32_t>();
        if (n > r.left())
            throw py::value_error("BYTES element " + std::to_string(i) + " declares " + std::to_string(n) +
                                  " bytes but only " + std::to_string(r.left()) + " remain");
        items[i] = py::bytes(r.pos, n);
        r.pos += n;
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

// ---- The request parser's results as Python objects -----------------------
py::str utf8(const char *base, icow::Span s, const char *field) {
    PyObject *text = PyUnicode_DecodeUTF8(base + s.off, static_cast<Py_ssize_t>(s.len), "strict");
    if (!text) {
        PyErr_Clear();
        throw icow::ParseError(std::string(field) + " is not valid UTF-8");
    }
    return py::reinterpret_steal<py::str>(text);
}

py::dict params_dict(const char *base, const std::vector<icow::Param> &params) {
    py::dict out;
    for (const auto &p : params) {
        py::object value;
        switch (p.kind) {
            case icow::Param::BOOL: value = py::bool_(p.i != 0); break;
            case icow::Param::INT64: value = py::int_(p.i); break;
            case icow::Param::STRING: value = utf8(base, p.s, "a string parameter"); break;
            case icow::Param::DOUBLE: value = py::float_(p.d); break;
            case icow::Param::UINT64: value = py::int_(p.u); break;
            default: value = py::none();
        }
        out[utf8(base, p.key, "a parameter name")] = value;
    }
    return out;
}

py::tuple parse_request(const py::buffer &data) {
    py::buffer_info info = data.request();
    if (info.ndim != 1 || info.itemsize != 1 || info.strides[0] != 1)
        throw py::value_error("parse_request expects contiguous bytes");
    const char *base = static_cast<const char *>(info.ptr);
    icow::Request req;
    if (static_cast<size_t>(info.size) >= icow::RELEASE_GIL_BYTES) {
        py::gil_scoped_release release;  // the byte work needs no Python
        req = icow::parse_request(base, static_cast<size_t>(info.size));
    } else {
        req = icow::parse_request(base, static_cast<size_t>(info.size));
    }
    py::object whole = py::reinterpret_steal<py::object>(PyMemoryView_FromObject(data.ptr()));
    if (!whole) throw py::error_already_set();
    py::list inputs;
    for (auto &in : req.inputs) {
        py::object contents = py::none();  // in shared memory: the server's registry reads it
        if (in.has_raw) {  // a view into the request: no copy
            contents = py::reinterpret_steal<py::object>(PySequence_GetSlice(
                whole.ptr(), static_cast<Py_ssize_t>(in.raw.off), static_cast<Py_ssize_t>(in.raw.off + in.raw.len)));
            if (!contents) throw py::error_already_set();
        } else if (!in.shared_memory) {
            contents = py::bytes(in.typed.data(), in.typed.size());
        }
        py::tuple shape(in.shape.size());
        for (size_t i = 0; i < in.shape.size(); ++i) shape[i] = py::int_(in.shape[i]);
        inputs.append(py::make_tuple(utf8(base, in.name, "an input name"), py::str(std::string(in.type->name)), shape,
                                     params_dict(base, in.params), contents));
    }
    py::list outputs;
    for (const auto &out : req.outputs)
        outputs.append(py::make_tuple(utf8(base, out.name, "an output name"), params_dict(base, out.params)));
    return py::make_tuple(utf8(base, req.model_name, "model_name"), utf8(base, req.model_version, "model_version"),
                          utf8(base, req.id, "id"), params_dict(base, req.params), inputs, outputs);
}

// ---- Addresses, and a request's model name without the full parse ---------
// The address of a buffer's first byte, for IOBinding: numpy's
// __array_interface__ builds a dict per call to say the same.
uintptr_t address_of(const py::buffer &data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data.ptr(), &view, PyBUF_ANY_CONTIGUOUS) != 0) throw py::error_already_set();
    const auto address = reinterpret_cast<uintptr_t>(view.buf);
    PyBuffer_Release(&view);
    return address;
}

// model_name (field 1) of a ModelInferRequest, the other top-level fields skipped
// by their length: what the auth interceptor needs before the full parse.
std::string model_name(const py::buffer &data) {
    py::buffer_info info = data.request();
    icow::Reader r(static_cast<const char *>(info.ptr), static_cast<size_t>(info.size * info.itemsize));
    std::string name;
    while (!r.done()) {
        auto [field, wire_type] = r.tag();
        if (field == 1 && wire_type == icow::LEN) {
            const icow::Span s = r.bytes();
            name.assign(r.base + s.off, s.len);  // the last occurrence wins, as in protobuf
        } else {
            r.skip(wire_type, field);
        }
    }
    return name;
}

}  // namespace

// ---- The module -----------------------------------------------------------
PYBIND11_MODULE(_wire, m) {
    m.doc() = "icow's compiled wire codec";
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const icow::ParseError &e) {  // names from the request may not be UTF-8
            const std::string msg = e.what();
            py::object text = py::reinterpret_steal<py::object>(
                PyUnicode_DecodeUTF8(msg.data(), static_cast<Py_ssize_t>(msg.size()), "replace"));
            PyErr_SetObject(PyExc_ValueError, text.ptr());
        }
    });
    m.def("unpack_bytes", &unpack_bytes, py::arg("data"), py::arg("count"),
          "Split length-prefixed BYTES contents into `count` bytes objects.");
    m.def("pack_bytes", &pack_bytes, py::arg("items"),
          "Join bytes/str items into length-prefixed BYTES contents.");
    m.def("model_name", &model_name, py::arg("data"),
          "model_name of a serialized ModelInferRequest, without parsing its tensors.");
    m.def("guard_mapping", &icow::sigbus::guard, py::arg("start"), py::arg("length"),
          "Absorb SIGBUS in [start, start + length) (a mapping whose object may shrink); its slot, or -1.");
    m.def("unguard_mapping", &icow::sigbus::unguard, py::arg("slot"), "Stop guarding a slot from guard_mapping.");
    m.def("mapping_faulted", &icow::sigbus::faulted, py::arg("slot"),
          "Whether a SIGBUS was absorbed in the slot's range (its pages there are now private zeros).");
    m.def("address_of", &address_of, py::arg("data"), "The address of a contiguous buffer's first byte.");
    m.def("parse_request", &parse_request, py::arg("data"),
          "Parse and check a serialized ModelInferRequest; raw tensor contents are views into `data`.");
    py::class_<icow::ResponseBuffer>(m, "ResponseBuffer")
        .def(py::init([](const std::string &model_name, const std::string &model_version, const std::string &id,
                         const std::vector<std::tuple<std::string, std::string, std::vector<int64_t>, size_t>> &outs) {
                 std::vector<icow::OutputSpec> specs;
                 specs.reserve(outs.size());
                 for (const auto &[name, datatype, shape, nbytes] : outs) specs.push_back({name, datatype, shape, nbytes});
                 return new icow::ResponseBuffer(model_name, model_version, id, specs);
             }),
             py::arg("model_name"), py::arg("model_version"), py::arg("id"), py::arg("outputs"))
        .def("address", &icow::ResponseBuffer::address, py::arg("index"))
        .def("write", &icow::ResponseBuffer::write, py::arg("index"), py::arg("data"))
        .def("mark_written", &icow::ResponseBuffer::mark_written, py::arg("index"))
        .def("finish", &icow::ResponseBuffer::finish)
        .def_property_readonly("size", &icow::ResponseBuffer::size);
}
