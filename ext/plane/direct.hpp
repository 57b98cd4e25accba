// ModelInfer served on the caller's thread, for icow's grpcio data plane
// (`--data-plane grpcio`): the native plane's parse, plan and bound run, called
// from grpcio's raw-bytes handler instead of from a grpc++ reactor. What it
// cannot serve exactly as the full path would, it leaves to the full path.
#pragma once

#include <pybind11/pybind11.h>

#include <atomic>
#include <memory>

#include "models.hpp"
#include "workers.hpp"

namespace py = pybind11;

namespace icow::plane {

class Direct {
  public:
    explicit Direct(size_t max_message) : max_message_(max_message) {}

    ~Direct();

    void publish(std::shared_ptr<const Table> table) { std::atomic_store(&table_, std::move(table)); }

    // Share the queues of the native plane whose entries it is published: a request to a
    // batching model (or an ensemble's batching step) then waits in that model's C++ queue
    // and batches with the plane's calls, on its `workers`. Unshared: the Python path's.
    void share_queues(std::shared_ptr<Workers> workers) { workers_ = std::move(workers); }

    // Called with the GIL held. The serialized response (bytes); a refusal
    // (status code, message, model, version) when the request left the queue
    // without running; None: the full path serves this request.
    // `deadline_ns`: steady clock, 0 none; `alive`: False once the call is cancelled.
    py::object serve(const py::bytes &data, int64_t deadline_ns, const py::object &alive);

    // An HTTP inference request (icow.http) whose JSON header Python parsed: every input
    // binary, `inputs` as (name, datatype, shape, offset, size) of its bytes in `body`,
    // `outputs` the names asked for (empty: all), all binary. The answer: (bytes, length
    // of its JSON header), a refusal as serve's, or None. `may_wait` false: None also
    // when no instance is idle; `brief_only` (the HTTP event loop): None also when the
    // model's runs are not brief.
    py::object serve_http(const std::string &model, const std::string &version, const std::string &id,
                          const py::list &inputs, const py::list &outputs, const py::buffer &body,
                          int64_t deadline_ns, const py::object &alive, bool may_wait, bool brief_only);

    std::atomic<uint64_t> served_fast{0}, handed_on{0};  // answered here, left to the full path

  private:
    enum class Layout { GRPC, HTTP };
    py::object run(const py::bytes &data, int64_t deadline_ns, const py::object &alive);
    // `plan` run on an instance of `entry`, answered in `layout`.
    py::object execute(const std::shared_ptr<ModelEntry> &entry, const Plan &plan, const std::string &id,
                       int64_t deadline_ns, const py::object &alive, Layout layout, bool may_wait);
    py::object execute_ensemble(const std::shared_ptr<ModelEntry> &entry, const Plan &plan, const std::string &id,
                                int64_t deadline_ns, const py::object &alive, Layout layout);
    std::shared_ptr<ModelEntry> plan(const char *base, size_t size, Request *request, Plan *plan) const;

    py::object execute_queued(const std::shared_ptr<ModelEntry> &entry, const Plan &plan, const std::string &id,
                              int64_t deadline_ns, const py::object &alive, Layout layout);
    bool serves(const ModelEntry &entry) const { return entry.batching.max_rows == 0 || workers_; }

    const size_t max_message_;
    std::shared_ptr<const Table> table_ = std::make_shared<Table>();
    std::shared_ptr<Workers> workers_;  // the native plane's, once shared
};

}  // namespace icow::plane
