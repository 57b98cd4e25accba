// An ensemble (Triton's platform "ensemble") on the fast path: its steps run one
// after the other on the thread that serves the request, each on an instance of its
// composing model's entry, taken in that entry's line. An intermediate tensor is
// written by one step's run where the next step's run reads it (one block per
// request, bound as it lies: no serialization, no numpy); the tensors the client asked
// for are written by their step straight into the response. What it cannot serve
// exactly as the full path would (runtime/ensemble.py), it leaves to that path.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "binding.hpp"
#include "models.hpp"
#include "workers.hpp"

namespace icow::plane {

// One step as the Python graph gives it (ensemble_graph.Step); tensors are slots:
// 0..n-1 the ensemble's inputs in spec order, then each step's outputs.
struct EnsembleStep {
    std::string model, version;  // the composing model's table key ("": its default version)
    std::string label;           // "step 1 (model 's1')", for messages
    std::vector<std::pair<std::string, size_t>> inputs, outputs;  // the model's tensor, its slot
};

struct EnsembleGraph {
    std::vector<EnsembleStep> steps;  // in dependency order
    size_t slots = 0;
    std::vector<size_t> outputs;      // the slot of each ensemble output, in spec order
};

// A tensor of one request: its type and shape known before any step runs.
struct Slot {
    std::string datatype;
    std::vector<int64_t> shape;
    size_t nbytes = 0;
    const char *at = nullptr;  // where it is read
    char *place = nullptr;     // where its step writes it
};

struct StepPlan {
    std::shared_ptr<ModelEntry> entry;
    Plan plan;                      // the step's run: inputs (placed before it runs), bound outputs
    std::vector<size_t> input_slots, output_slots;  // by the model's input index, by plan.outputs' order
    bool counted = false;  // its model's statistics counted it (it ran through that model's queue)
};

struct StepTimes {
    int64_t arrived = 0, start = 0, fed = 0, ran = 0;  // steady ns: in line, instance taken, bound, run
};

// One request's run through the graph; it may run in parts (a step whose instance was
// busy is run later, on a thread that may wait).
struct EnsemblePlan {
    EnsemblePlan() = default;
    EnsemblePlan(const EnsemblePlan &) = delete;
    EnsemblePlan &operator=(const EnsemblePlan &) = delete;
    ~EnsemblePlan();

    std::vector<StepPlan> steps;
    std::vector<Slot> slots;
    std::vector<OutputSpec> response;  // the outputs asked for, in the request's order
    std::vector<size_t> response_slots;
    std::vector<char *> places;  // where the outputs asked for go (set by the caller, in the response)
    int64_t rows = 1;            // the request's batch size
    StageBuffer block;           // the intermediate tensors
    size_t next_step = 0;        // the first step not run yet
    std::vector<StepTimes> times;
    std::vector<ModelEntry *> held;  // the composing entries whose pending count this request holds

    // Whether every step's model ran before, and all of them together run briefly: worth
    // trying on the thread that read the request (ModelEntry::runs_briefly).
    bool brief() const;
};

// Resolves every step's model in `table` and sizes every tensor from the request's
// `plan` (ModelEntry::plan of the ensemble's entry); false: the full path serves it.
// `batches`: a step may run a batching model (the native plane, whose queues batch in C++).
bool plan_ensemble(const Table &table, const ModelEntry &ensemble, const Plan &plan, size_t max_response,
                   bool batches, EnsemblePlan *out);

struct EnsembleOutcome {
    // FULL_PATH: it runs the request again, and says why; BUSY: a step found no idle
    // instance and might not wait (run_ensemble goes on from that step when called again).
    enum Kind { DONE, REFUSED, FULL_PATH, BUSY } kind = DONE;
    Refusal refusal;
};

// Runs the steps from `plan->next_step`, the outputs asked for written at `plan->places`.
// Call with the GIL held; waits for instances without it where `may_wait`. `alive`
// (called with the GIL): false once the caller is gone. Counts the requests of the
// ensemble and of each composing model where they succeed, and the refusals. A step of a
// batching model joins that model's queue, whose batches run on `workers` (the plane's).
EnsembleOutcome run_ensemble(const ModelEntry &ensemble, EnsemblePlan *plan, int64_t arrived_ns, int64_t deadline_ns,
                             const std::function<bool()> &alive, bool may_wait, Workers *workers = nullptr);

}  // namespace icow::plane
