// What waits in a model's queue on the native plane (ModelEntry::waiting, forming):
// a gRPC call (call.hpp), or a WaitedJob: a request whose caller blocks until it ran
// (an ensemble's step, the HTTP and stream lanes' requests to a batching model).
// Both run alone or in a batch (batch.cpp), and leave the queue unrun when refused,
// expired or cancelled.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
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

// A request whose caller waits for it: it joins the model's queue, runs alone or in a
// batch with the model's calls (which counts it in the model's statistics), and tells
// the caller how it ended.
class WaitedJob final : public Job {
  public:
    struct End {
        enum Kind { DONE, REFUSED, FULL_PATH } kind = DONE;  // FULL_PATH: its run failed; the full path says why
        Refusal refusal;
    };

    // `plan`'s outputs go to `outputs` (by plan.outputs' order); its batches run on `workers`.
    WaitedJob(std::shared_ptr<ModelEntry> entry, const Plan &plan, std::vector<char *> outputs, int64_t arrived_ns,
              int64_t deadline_ns, bool by_queue, Workers *workers);

    void run_on(const ModelEntry &entry, size_t instance) override;
    void fail(const Refusal &refusal) override { finish({End::REFUSED, refusal}); }
    std::vector<char *> batch_places(const ModelEntry &) override { return outputs_; }
    void batch_done(int64_t start_ns, int64_t fed_ns, int64_t ran_ns) override;

    // Into the model's queue (an idle instance starts a batch loop for it), then wait
    // without the GIL (call it with the GIL held) until it ran or was refused. `alive`
    // (called with the GIL): false once the caller is gone; that, or the deadline
    // passing, takes it out of the queue if no batch has taken it yet.
    End queue_and_wait(const std::function<bool()> &alive);

    int64_t start_ns = 0, fed_ns = 0, ran_ns = 0;  // its run (a batch's), once DONE

  private:
    void finish(const End &end);
    bool leave_queue();

    const std::vector<char *> outputs_;
    std::mutex mu_;
    std::condition_variable done_;
    bool finished_ = false;
    End end_;
};

}  // namespace icow::plane
