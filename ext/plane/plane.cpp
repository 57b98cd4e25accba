// icow._plane: the native gRPC data plane (docs/native-plane.md). A grpc++
// server (callback API, one generic service on raw ByteBuffers, no protobuf
// objects) on the public port. ModelInfer requests that the model table
// published from Python can serve are parsed, checked, run through ONNX
// Runtime with IOBinding and answered in C++ (call.cpp); everything else goes
// through to icow's grpcio server on a private Unix socket.
//
// It links the system's libgrpc++ (Debian: 1.51) dynamically. grpcio's cygrpc
// carries its own, statically linked gRPC core; both live in one process
// because Python loads extension modules RTLD_LOCAL and neither exports the
// other's names (docs/native-plane.md, "Coexistence").

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <absl/synchronization/mutex.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "binding.hpp"
#include "direct.hpp"
#include "models.hpp"
#include "service.hpp"

namespace py = pybind11;
using icow::plane::Direct;
using icow::plane::ModelEntry;
using icow::plane::Options;
using icow::plane::Service;
using icow::plane::Tally;

namespace icow::plane {
void bind_buffer_pool(py::module_ &m);  // buffers.cpp
}

namespace {

// ---- From Python's arguments: TLS credentials, the model table ------------
// (key PEM, certificate chain PEM, client CA PEM or None): TLS, with client certificates when a CA is given.
std::shared_ptr<grpc::ServerCredentials> credentials(const std::optional<py::tuple> &tls) {
    if (!tls) return grpc::InsecureServerCredentials();
    const py::tuple &t = *tls;
    const bool verify = !t[2].is_none();
    grpc::SslServerCredentialsOptions options(verify ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                                     : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    options.pem_key_cert_pairs.push_back({t[0].cast<std::string>(), t[1].cast<std::string>()});
    if (verify) options.pem_root_certs = t[2].cast<std::string>();
    return grpc::SslServerCredentials(options);
}

// The model table from ModelTable.entries(): key -> ModelEntry.
std::shared_ptr<const icow::plane::Table> table_of(const py::dict &entries) {
    auto table = std::make_shared<icow::plane::Table>();
    for (auto [key, entry] : entries) table->emplace(key.cast<std::string>(), entry.cast<std::shared_ptr<ModelEntry>>());
    return table;
}

// ---- The server -----------------------------------------------------------
class Server {
  public:
    Server(const std::string &address, const Options &options, const std::optional<py::tuple> &tls)
        : service_(std::make_unique<Service>(options)) {
        grpc::ServerBuilder builder;
        builder.AddListeningPort(address, credentials(tls), &port_);
        builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message));
        builder.SetMaxSendMessageSize(static_cast<int>(options.max_message));
        builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a taken port is an error, not shared
        builder.RegisterCallbackGenericService(service_.get());
        {
            py::gil_scoped_release release;
            server_ = builder.BuildAndStart();
        }
        if (!server_ || port_ == 0) throw std::runtime_error("cannot listen on " + address);
    }

    ~Server() { stop(0.0); }

    void publish(const py::dict &entries) {
        service_->publish(table_of(entries));  // the old table goes with its last call
    }

    void stop(double grace_s) {
        if (!server_) return;
        {
            py::gil_scoped_release release;  // calls in flight may need the GIL to finish
            server_->Shutdown(std::chrono::system_clock::now() +
                              std::chrono::microseconds(static_cast<int64_t>(grace_s * 1e6)));
            server_->Wait();
            // Every client-facing call is done; a call passed to the backend may still be
            // going (backend_done finishes this side, then lets go of its own): the
            // backend's channel and the workers stay until it is gone (census.hpp).
            service_->calls.wait_until_empty();
        }
        server_.reset();
        py::gil_scoped_release release;  // the workers may wait for the GIL before they can end
        service_->publish(std::make_shared<icow::plane::Table>());
        service_.reset();
    }

    // (sha256 digest, models or None) per token: ModelInfer's fast path checks them as icow.auth does.
    void set_tokens(const py::list &tokens) {
        std::vector<icow::plane::Token> parsed;
        for (auto item : tokens) {
            auto t = item.cast<py::tuple>();
            icow::plane::Token token{t[0].cast<std::string>(), t[1].is_none(), {}};
            if (!token.every_model) token.models = t[1].cast<std::vector<std::string>>();
            parsed.push_back(std::move(token));
        }
        service().tokens = std::move(parsed);
    }

    Service &service() {
        if (!service_) throw std::runtime_error("the server was stopped");
        return *service_;
    }
    int port() const { return port_; }

  private:
    std::unique_ptr<Service> service_;  // outlives server_ (declared first, destroyed last)
    std::unique_ptr<grpc::Server> server_;
    int port_ = 0;
};

}  // namespace

// ---- The module -----------------------------------------------------------
PYBIND11_MODULE(_plane, m) {
    m.doc() = "icow's native gRPC data plane: a grpc++ server on raw bytes";
    // Debian's abseil tracks lock order: a graph updated as mutexes are locked, made and
    // destroyed (GraphCycles in `perf` profiles of the plane). gRPC needs none of it.
    absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
    m.attr("GRPC_VERSION") = grpc::Version();
    m.attr("MODEL_INFER") = icow::plane::MODEL_INFER;
    icow::plane::bind_buffer_pool(m);
    m.def("staged_bytes", &icow::plane::staged_bytes,
          "Tensor bytes copied into and out of staging buffers by bound runs (binding.hpp), since start.");

    py::class_<Tally, std::shared_ptr<Tally>>(m, "Tally")
        .def(py::init<std::vector<int64_t>>(), py::arg("bounds_us"))
        .def("take", &Tally::take, "What was counted since the last take (tally.hpp), counting from zero again.");

    py::class_<ModelEntry, std::shared_ptr<ModelEntry>>(m, "ModelEntry")
        .def(py::init<std::string, int64_t, int64_t, const py::list &, const py::list &, const py::list &,
                      std::shared_ptr<Tally>, py::object, size_t, int64_t, const py::object &, const py::object &>(),
             py::arg("name"), py::arg("version"), py::arg("max_batch_size"), py::arg("inputs"), py::arg("outputs"),
             py::arg("instances"), py::arg("tally"), py::arg("record_failure"), py::arg("max_queue") = 0,
             py::arg("queue_timeout_ns") = 0, py::arg("batching") = py::none(), py::arg("ensemble") = py::none())
        .def_property_readonly("name", [](const ModelEntry &e) { return e.spec.name; })
        .def_property_readonly("version", [](const ModelEntry &e) { return e.spec.version; })
        .def_property_readonly("disabled", [](const ModelEntry &e) { return e.disabled.load(); })
        .def_property_readonly("is_ensemble", [](const ModelEntry &e) { return e.ensemble != nullptr; })
        .def_property_readonly("pending", [](const ModelEntry &e) { return e.pending.load(); })
        .def("disable", [](ModelEntry &e) { e.disabled.store(true); },
             "Leave the model to the full path from now on (its outputs cannot be bound before the run).");

    py::class_<Direct>(m, "Direct")
        .def(py::init<size_t>(), py::arg("max_message_bytes"))
        .def("publish", [](Direct &d, const py::dict &entries) { d.publish(table_of(entries)); }, py::arg("entries"))
        .def("serve", &Direct::serve, py::arg("data"), py::arg("deadline_ns"), py::arg("alive"))
        .def("share_queues", [](Direct &d, Server &s) { d.share_queues(s.service().workers); }, py::arg("server"),
             "Requests to batching models wait in `server`'s C++ queues (it serves the entries published here).")
        .def("serve_http", &Direct::serve_http, py::arg("model"), py::arg("version"), py::arg("id"),
             py::arg("inputs"), py::arg("outputs"), py::arg("body"), py::arg("deadline_ns"), py::arg("alive"),
             py::arg("may_wait"), py::arg("brief_only"))
        .def_property_readonly("served_fast", [](Direct &d) { return d.served_fast.load(); })
        .def_property_readonly("handed_on", [](Direct &d) { return d.handed_on.load(); });

    py::class_<Server>(m, "Server")
        .def(py::init([](const std::string &address, const std::string &backend, bool echo, size_t workers,
                         size_t max_message_bytes, size_t max_concurrent, std::optional<py::tuple> tls) {
                 Options o;
                 o.backend = backend;
                 o.echo = echo;
                 o.workers = workers;
                 o.max_message = max_message_bytes;
                 o.max_concurrent = max_concurrent;
                 return std::make_unique<Server>(address, o, tls);
             }),
             py::arg("address"), py::arg("backend") = "", py::arg("echo") = false, py::arg("workers") = 16,
             py::arg("max_message_bytes") = (1u << 31) - 1, py::arg("max_concurrent") = 0,
             py::arg("tls") = py::none())
        .def_property_readonly("port", &Server::port)
        .def_property(
            "fast", [](Server &s) { return s.service().fast.load(); },
            [](Server &s, bool on) { s.service().fast.store(on); })
        .def("publish", &Server::publish, py::arg("entries"))
        .def("set_tokens", &Server::set_tokens, py::arg("tokens"),
             "Before serving: [(sha256 digest, [model, ...] or None)]; the fast path serves only calls they allow.")
        .def_property_readonly("served_fast", [](Server &s) { return s.service().served_fast.load(); })
        .def_property_readonly("handed_on", [](Server &s) { return s.service().handed_on.load(); })
        .def_property_readonly("in_flight", [](Server &s) { return s.service().in_flight.load(); })
        .def("stop", &Server::stop, py::arg("grace") = 0.0);
}
