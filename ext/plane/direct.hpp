// ModelInfer served on the caller's thread, for icow's grpcio data plane
// (`--data-plane grpcio`): the native plane's parse, plan and bound run, called
// from grpcio's raw-bytes handler instead of from a grpc++ reactor. What it
// cannot serve exactly as the full path would, it leaves to the full path.
#pragma once

#include <pybind11/pybind11.h>

#include <atomic>
#include <memory>

#include "models.hpp"

namespace py = pybind11;

namespace icow::plane {

class Direct {
  public:
    explicit Direct(size_t max_message) : max_message_(max_message) {}

    void publish(std::shared_ptr<const Table> table) { std::atomic_store(&table_, std::move(table)); }

    // Called with the GIL held. The serialized response (bytes); a refusal
    // (status code, message, model, version) when the request left the queue
    // without running; None: the full path serves this request.
    // `deadline_ns`: steady clock, 0 none; `alive`: False once the call is cancelled.
    py::object serve(const py::bytes &data, int64_t deadline_ns, const py::object &alive);

    std::atomic<uint64_t> served_fast{0}, handed_on{0};  // answered here, left to the full path

  private:
    py::object run(const py::bytes &data, int64_t deadline_ns, const py::object &alive);
    std::shared_ptr<ModelEntry> plan(const char *base, size_t size, Request *request, Plan *plan) const;

    const size_t max_message_;
    std::shared_ptr<const Table> table_ = std::make_shared<Table>();
};

}  // namespace icow::plane
