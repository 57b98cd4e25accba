// icow._plane: the spike of a native gRPC data plane (issue 8). A grpc++
// server (callback API, one CallbackGenericService on raw ByteBuffers, no
// protobuf objects) that serves /inference.GRPCInferenceService/ModelInfer
// either entirely in C++ (echo: the floor of this plane) or by handing the
// request bytes to a Python callable and sending back the bytes it returns.
//
// It links Debian's libgrpc++ (1.51) dynamically. grpcio's cygrpc carries its
// own, statically linked gRPC core; both live in one process because Python
// loads extension modules RTLD_LOCAL and neither exports the other's names
// into the global scope (docs/native-plane.md, "Coexistence").
//
// Memory on the hot path:
//   request   one slice (small messages): a memoryview over that slice, no copy;
//             several slices (large messages): one copy into a single slice,
//             made without the GIL, then the same memoryview.
//   response  under COPY_BELOW bytes: copied into a gRPC slice (cheaper than
//             a second GIL acquisition to release it); larger: the Python
//             bytes object itself becomes the slice (no copy), released
//             under the GIL when gRPC is done with it.

#include <pybind11/pybind11.h>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

namespace py = pybind11;

namespace {

constexpr const char *MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer";
constexpr size_t COPY_BELOW = 64 << 10;

bool python_alive() {
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsInitialized() && !Py_IsFinalizing();
#else
    return Py_IsInitialized() && !_Py_IsFinalizing();
#endif
}

// The GIL from a gRPC thread. PyGILState_Ensure makes a thread state for a
// thread Python has not seen and deletes it again on Release: microseconds per
// call. The first use on each thread keeps one alive for the thread's life.
class Gil {
  public:
    Gil() {
        thread_local bool kept = false;
        if (!kept && PyGILState_GetThisThreadState() == nullptr) {  // a thread Python has not seen
            PyGILState_Ensure();  // never released: the thread state stays
            PyEval_SaveThread();
            kept = true;
        }
        state_ = PyGILState_Ensure();
    }
    ~Gil() { PyGILState_Release(state_); }
    Gil(const Gil &) = delete;
    Gil &operator=(const Gil &) = delete;

  private:
    PyGILState_STATE state_;
};

// ---------------------------------------------------------------------------
// A request's bytes as a Python buffer: owns one reference to a gRPC slice
// ---------------------------------------------------------------------------
struct RequestSlice {
    grpc::Slice slice;
};

py::object request_view(const grpc::ByteBuffer &buffer) {
    grpc::Slice slice;
    if (!buffer.TrySingleSlice(&slice).ok()) {
        py::gil_scoped_release release;  // the one copy of a large request needs no Python
        if (!buffer.DumpToSingleSlice(&slice).ok()) throw std::runtime_error("could not read the request");
    }
    py::object owner = py::cast(new RequestSlice{std::move(slice)}, py::return_value_policy::take_ownership);
    return py::memoryview(owner);
}

// ---------------------------------------------------------------------------
// A Python bytes-like result as the response ByteBuffer
// ---------------------------------------------------------------------------
void release_python(void *object) {
    if (!python_alive()) return;  // at exit: leak rather than touch a dying interpreter
    Gil gil;
    Py_DECREF(static_cast<PyObject *>(object));
}

void fill_response(const py::handle &result, grpc::ByteBuffer *out) {
    char *data;
    Py_ssize_t size;
    if (PyBytes_Check(result.ptr())) {
        PyBytes_AsStringAndSize(result.ptr(), &data, &size);
        if (static_cast<size_t>(size) < COPY_BELOW) {
            grpc::Slice slice(data, static_cast<size_t>(size));  // copies
            *out = grpc::ByteBuffer(&slice, 1);
        } else {
            Py_INCREF(result.ptr());  // gRPC holds the bytes object until it has sent them
            grpc::Slice slice(data, static_cast<size_t>(size), release_python, result.ptr());
            *out = grpc::ByteBuffer(&slice, 1);
        }
        return;
    }
    py::buffer_info info = py::reinterpret_borrow<py::buffer>(result).request();  // any other buffer: one copy
    grpc::Slice slice(info.ptr, static_cast<size_t>(info.size * info.itemsize));
    *out = grpc::ByteBuffer(&slice, 1);
}

// The handler's answer: bytes-like (OK), or (code, message) for a status.
grpc::Status answer(const py::object &result, grpc::ByteBuffer *out) {
    if (py::isinstance<py::tuple>(result)) {
        auto t = result.cast<py::tuple>();
        if (t.size() != 2) return grpc::Status(grpc::StatusCode::INTERNAL, "handler returned a tuple not (code, message)");
        int code = t[0].cast<int>();
        if (code <= 0 || code > 16) return grpc::Status(grpc::StatusCode::INTERNAL, "handler returned an invalid code");
        return grpc::Status(static_cast<grpc::StatusCode>(code), t[1].cast<std::string>());
    }
    fill_response(result, out);
    return grpc::Status::OK;
}

// ---------------------------------------------------------------------------
// The service: one reactor per call
// ---------------------------------------------------------------------------
class Service final : public grpc::CallbackGenericService {
  public:
    // handler(data) -> bytes | (code, message); None: echo in C++.
    // other(method, data) -> bytes | (code, message); None: UNIMPLEMENTED.
    Service(py::object handler, py::object other) : handler_(std::move(handler)), other_(std::move(other)) {}

    ~Service() override {
        py::gil_scoped_acquire gil;
        handler_ = py::object();
        other_ = py::object();
    }

    grpc::ServerGenericBidiReactor *CreateReactor(grpc::GenericCallbackServerContext *context) override;

    grpc::Status handle(const std::string &method, const grpc::ByteBuffer &request, grpc::ByteBuffer *response) {
        const bool infer = method == MODEL_INFER;
        if (infer) calls.fetch_add(1, std::memory_order_relaxed);
        if (infer && handler_is_none_) {
            *response = request;  // shares the slices: the floor of this plane
            return grpc::Status::OK;
        }
        if (!infer && other_is_none_)
            return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "method " + method + " is not served here");
        Gil gil;
        try {
            py::object data = request_view(request);
            py::object result = infer ? handler_(data) : other_(py::str(method), data);
            return answer(result, response);
        } catch (py::error_already_set &e) {  // the type and message, not pybind11's traceback lines
            std::string what = py::str(e.type().attr("__name__")).cast<std::string>() + ": " +
                               py::str(e.value()).cast<std::string>();
            return grpc::Status(grpc::StatusCode::INTERNAL, "handler failed: " + what);
        } catch (const std::exception &e) {
            return grpc::Status(grpc::StatusCode::INTERNAL, std::string("handler failed: ") + e.what());
        }
    }

    void set_none_flags() {
        handler_is_none_ = handler_.is_none();
        other_is_none_ = other_.is_none();
    }

    std::atomic<uint64_t> calls{0};

  private:
    py::object handler_, other_;
    bool handler_is_none_ = true, other_is_none_ = true;
};

// A unary call on the generic (bidi) interface: read one message, answer it,
// finish. Runs on gRPC's callback threads; the Python handler runs there too,
// under the GIL (the spike's simplification: see docs/native-plane.md).
class Call final : public grpc::ServerGenericBidiReactor {
  public:
    Call(Service *service, grpc::GenericCallbackServerContext *context) : service_(service), context_(context) {
        StartRead(&request_);
    }

    void OnReadDone(bool ok) override {
        if (!ok) {
            Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request message"));
            return;
        }
        grpc::Status status = service_->handle(context_->method(), request_, &response_);
        request_.Clear();
        if (!status.ok()) {
            Finish(status);
            return;
        }
        StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
    }

    void OnDone() override { delete this; }

  private:
    Service *service_;
    grpc::GenericCallbackServerContext *context_;
    grpc::ByteBuffer request_, response_;
};

grpc::ServerGenericBidiReactor *Service::CreateReactor(grpc::GenericCallbackServerContext *context) {
    return new Call(this, context);
}

// ---------------------------------------------------------------------------
// The Python face
// ---------------------------------------------------------------------------
class Server {
  public:
    Server(const std::string &address, py::object handler, py::object other, int max_message_bytes)
        : service_(std::make_unique<Service>(std::move(handler), std::move(other))) {
        service_->set_none_flags();
        grpc::ServerBuilder builder;
        builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port_);
        builder.SetMaxReceiveMessageSize(max_message_bytes);
        builder.SetMaxSendMessageSize(max_message_bytes);
        builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
        builder.RegisterCallbackGenericService(service_.get());
        {
            py::gil_scoped_release release;
            server_ = builder.BuildAndStart();
        }
        if (!server_ || port_ == 0) throw std::runtime_error("could not serve on " + address);
    }

    ~Server() { stop(0.0); }

    void stop(double grace_s) {
        if (!server_) return;
        {
            py::gil_scoped_release release;  // calls in flight may need the GIL to finish
            server_->Shutdown(std::chrono::system_clock::now() +
                              std::chrono::microseconds(static_cast<int64_t>(grace_s * 1e6)));
            server_->Wait();
        }
        server_.reset();
    }

    int port() const { return port_; }
    uint64_t calls() const { return service_->calls.load(std::memory_order_relaxed); }

  private:
    std::unique_ptr<Service> service_;  // outlives server_ (declared first, destroyed last)
    std::unique_ptr<grpc::Server> server_;
    int port_ = 0;
};

}  // namespace

PYBIND11_MODULE(_plane, m) {
    m.doc() = "icow's native gRPC data plane (spike): grpc++ callback server on raw bytes";
    m.attr("GRPC_VERSION") = grpc::Version();
    m.attr("MODEL_INFER") = MODEL_INFER;

    py::class_<RequestSlice>(m, "RequestSlice", py::buffer_protocol())
        .def_buffer([](RequestSlice &s) {
            return py::buffer_info(const_cast<uint8_t *>(s.slice.begin()), 1, "B", 1,
                                   {static_cast<py::ssize_t>(s.slice.size())}, {1}, /*readonly=*/true);
        });

    py::class_<Server>(m, "Server")
        .def(py::init<const std::string &, py::object, py::object, int>(), py::arg("address"),
             py::arg("handler") = py::none(), py::arg("other") = py::none(),
             py::arg("max_message_bytes") = 256 << 20)
        .def_property_readonly("port", &Server::port)
        .def_property_readonly("calls", &Server::calls)
        .def("stop", &Server::stop, py::arg("grace") = 0.0);
}
