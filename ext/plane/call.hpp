// One call on the native plane (service.hpp says which way it goes).
#pragma once

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>

#include "job.hpp"
#include "models.hpp"
#include "service.hpp"

namespace icow::plane {

struct EnsemblePlan;
struct EnsembleOutcome;

class Call final : public grpc::ServerGenericBidiReactor, public Job {
  public:
    Call(Service *service, grpc::GenericCallbackServerContext *context);
    ~Call() override;

    void OnReadDone(bool ok) override;
    void OnWriteDone(bool ok) override;
    void OnCancel() override;
    void OnDone() override;

    // Run `job` on `instance` of its model (reserved for it), then whichever jobs
    // wait for that model: on a worker thread, or (`inline_run`, a model that runs
    // briefly) on the gRPC thread that read the request, for that one job.
    static void execute(Job *job, size_t instance, bool inline_run);

    // `instance`, freed by the HTTP fast lane that shares the entry (direct.cpp), goes
    // to `job`, first in the entry's queue: it runs on one of its server's workers.
    static void take_over(Job *job, size_t instance);

    // Dynamic batching (batch.cpp): a worker forms batches for one instance while jobs wait.
    static void batch_loop(std::shared_ptr<ModelEntry> entry, size_t instance);

    // Fails the jobs in `entry`'s queue whose deadline is due by `now_ns`; the next
    // deadline of those left, 0 if none (Expiry's sweep).
    static int64_t expire_waiting(ModelEntry &entry, int64_t now_ns);

  private:
    class Backend;
    friend class Backend;

    // The fast path
    void first_message(bool ok);
    bool plan();
    bool contiguous_request();
    void schedule();
    // An ensemble (ensemble.hpp): tried here when its steps run briefly, else (or from the
    // step whose instance was busy) on a thread of the plane's ensemble pool.
    void start_ensemble();
    void continue_ensemble();
    void finish_ensemble(const EnsembleOutcome &outcome);
    bool wait_in_queue();
    void queue_for_batch();
    void finish_failed(const grpc::Status &status);
    void leave_queue();
    void run_on(const ModelEntry &entry, size_t instance) override;
    void fail(const Refusal &refusal) override;
    std::vector<char *> batch_places(const ModelEntry &entry) override;
    void batch_done(int64_t start_ns, int64_t fed_ns, int64_t ran_ns) override;

    // Dynamic batching (batch.cpp)
    static std::vector<Job *> form_batch(ModelEntry &entry, std::unique_lock<std::mutex> &lock);
    static void run_batch(ModelEntry &entry, size_t instance, std::vector<Job *> &jobs);
    void answer(grpc::Slice &response);
    std::vector<char *> lay_out_response(const ModelSpec &model, const std::vector<OutputSpec> &outputs);
    bool run_bound(const ModelEntry &entry, const Instance &instance, char *response,
                   const std::vector<size_t> &offsets);

    // The way through to the backend
    void hand_on(bool have_first);
    void backend_write_done(bool ok);
    void backend_read_done(bool ok);
    void backend_initial_metadata();
    void backend_done(const grpc::Status &status);
    void release();

    Census::Member alive_;  // first: counted until the rest of the call is gone (census.hpp)
    Service *service_;
    grpc::GenericCallbackServerContext *context_;
    grpc::ByteBuffer up_, down_;  // a message from the client, to the client
    std::atomic<bool> proxying_{false};
    std::atomic<int> refs_{1};  // this side, and the backend's once started
    std::atomic<bool> queued_{false};  // entry_ is set and the call went into its queue

    // ModelInfer on the fast path
    grpc::Slice slice_;  // the request in one piece (one slice), or
    char *block_ = nullptr;  // its copy in a pooled block (many slices)
    size_t block_capacity_ = 0;
    const char *data_ = nullptr;  // where the request is: the parse's spans point into it
    size_t size_ = 0;
    Request request_;
    grpc::ByteBuffer response_;
    std::unique_ptr<EnsemblePlan> ensemble_;  // an ensemble's request: its plan
    grpc::Slice response_slice_;              // the response an ensemble's steps or a batch write into

    // The backend call
    std::unique_ptr<Backend> backend_;
    grpc::ClientContext client_context_;
};

}  // namespace icow::plane
