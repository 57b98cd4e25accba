// What waits in a model's queue on the native plane (ModelEntry::waiting, forming):
// a gRPC call (call.hpp), or a step of an ensemble that runs a batching model
// (ensemble.cpp). Both run alone or in a batch (batch.cpp), and leave the queue
// unrun when refused, expired or cancelled.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "models.hpp"
#include "plan.hpp"
#include "workers.hpp"

namespace icow::plane {

class Job {
  public:
    virtual ~Job() = default;

    int64_t arrived_ns() const { return arrived_ns_; }

    // Same outputs, same dims beyond the batch dim: one batch may run both.
    bool compatible(const Job &other) const;

    // Runs alone on `instance` of its model (reserved for it), and answers.
    virtual void run_on(const ModelEntry &entry, size_t instance) = 0;
    // Leaves the queue without running (refused, expired, cancelled).
    virtual void fail(const Refusal &refusal) = 0;
    // In a batch: where each output's rows go (by plan_.outputs), then told it ran
    // (steady ns: the batch's start, inputs bound, run over).
    virtual std::vector<char *> batch_places(const ModelEntry &entry) = 0;
    virtual void batch_done(int64_t start_ns, int64_t fed_ns, int64_t ran_ns) = 0;

    // Cancelled, or past its deadline: failed (true) rather than run.
    bool left_early(const ModelEntry &entry);

    std::shared_ptr<ModelEntry> entry_;
    Plan plan_;
    int64_t arrived_ns_ = 0, deadline_ns_ = 0;  // deadline 0: none
    bool queue_timeout_ = false;                // the deadline is the model's queue timeout
    std::atomic<bool> cancelled_{false};
    Workers *workers_ = nullptr;  // where its later work goes (the plane's model workers)
};

}  // namespace icow::plane
