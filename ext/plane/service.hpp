// The native plane's gRPC service: one generic (raw bytes) service for every
// method. ModelInfer requests that the model table can serve are run here
// (call.cpp, "the fast path"); every other call, and every ModelInfer the
// fast path hands on, goes unchanged to icow's grpcio server behind it (the
// backend, on a private Unix socket), so both planes answer alike.
#pragma once

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "census.hpp"
#include "expiry.hpp"
#include "models.hpp"
#include "workers.hpp"

namespace icow::plane {

inline constexpr const char *MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer";
// The client's address on a call passed to the backend, whose own peer is the Unix
// socket (icow/logs.py logs it); one a client sends is dropped, not passed on.
inline constexpr const char *PEER_HEADER = "x-icow-peer";

struct Options {
    std::string backend;         // the grpcio server's address ("unix:..."); empty: none
    bool echo = false;           // ModelInfer returns its request (the plane's floor, for benchmarks)
    size_t workers = 16;         // threads that run models
    size_t max_message = 0;      // bytes, each way
    size_t max_concurrent = 0;   // calls at once; 0: no limit
};

// A bearer token as icow.auth keeps it: sha256 of the secret, the models it may use.
struct Token {
    std::string digest;
    bool every_model = true;
    std::vector<std::string> models;
};

class Service final : public grpc::CallbackGenericService {
  public:
    explicit Service(const Options &options);

    grpc::ServerGenericBidiReactor *CreateReactor(grpc::GenericCallbackServerContext *context) override;

    std::shared_ptr<const Table> table() const { return std::atomic_load(&table_); }
    void publish(std::shared_ptr<const Table> table) { std::atomic_store(&table_, std::move(table)); }

    // Whether the call's bearer token may use `model` (the full path answers any other case).
    bool token_allows(grpc::GenericCallbackServerContext *context, std::string_view model) const;

    const Options options;
    std::vector<Token> tokens;  // set before serving; empty: no authentication
    std::atomic<bool> fast{false};  // Python turns the fast path off where it cannot match the full path
    std::unique_ptr<grpc::GenericStub> backend;
    // The threads that run models; shared with the Directs on the same entries (the HTTP and
    // stream lanes), whose waited jobs join these queues.
    std::shared_ptr<Workers> workers;
    Workers ensembles;  // an ensemble's steps wait for instances: never on `workers`, whose jobs free them
    Expiry expiry;  // after workers: gone before them, as it hands them work
    std::atomic<uint64_t> served_fast{0}, handed_on{0}, in_flight{0};
    Census calls;  // Call objects alive (in_flight counts calls until their OnDone)

  private:
    std::shared_ptr<const Table> table_ = std::make_shared<Table>();
};

}  // namespace icow::plane
