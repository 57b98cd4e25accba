#include "ensemble.hpp"

#include "core/clock.hpp"
#include "job.hpp"
#include "line.hpp"

namespace icow::plane {
namespace {

// gRPC status codes (the protocol's numbers) of the refusals made here.
constexpr int CANCELLED = 1, DEADLINE_EXCEEDED = 4;
constexpr size_t ALIGN = 64;  // each intermediate tensor starts aligned for ONNX Runtime's kernels
constexpr size_t NONE = SIZE_MAX;

size_t index_of(const std::vector<TensorSpec> &specs, const std::string &name) {
    for (size_t k = 0; k < specs.size(); ++k)
        if (specs[k].name == name) return k;
    return NONE;
}

// ---- Planning: every tensor's type and shape before anything runs -----------
// The step's run from the slots it reads; its outputs' slots typed and sized.
bool plan_step(const Table &table, const EnsembleStep &step, size_t max_response, bool batches,
               std::vector<Slot> *slots, StepPlan *out) {
    out->entry = find_entry(table, step.model, step.version);
    const ModelEntry *entry = out->entry.get();
    // A composing model the fast path does not run alone is not run here either.
    if (!entry || entry->ensemble || (!batches && entry->batching.max_rows > 0) ||
        entry->disabled.load(std::memory_order_relaxed))
        return false;
    const ModelSpec &spec = entry->spec;
    const size_t n = spec.inputs.size();
    if (step.inputs.size() != n) return false;
    Plan &plan = out->plan;
    plan.inputs.assign(n, nullptr);
    plan.input_shapes.assign(n, {});
    out->input_slots.assign(n, NONE);
    Symbols symbols;
    int64_t batch = -1;
    for (const auto &[name, slot] : step.inputs) {
        const size_t k = index_of(spec.inputs, name);
        if (k == NONE || out->input_slots[k] != NONE) return false;
        const Slot &s = (*slots)[slot];
        if (!check_input(spec, k, s.datatype, s.shape, &symbols, &batch)) return false;
        plan.input_shapes[k] = s.shape;
        out->input_slots[k] = slot;
    }
    plan.rows = spec.max_batch_size > 0 ? batch : 1;
    plan.outputs.clear();
    plan.response.clear();
    out->output_slots.clear();
    for (const auto &[name, slot] : step.outputs) {
        const size_t k = index_of(spec.outputs, name);
        OutputSpec o;
        if (k == NONE || !size_output(spec.outputs[k], symbols, max_response, &o)) return false;
        Slot &s = (*slots)[slot];
        s.datatype = o.datatype;
        s.shape = o.shape;
        s.nbytes = o.nbytes;
        plan.outputs.push_back(k);
        plan.response.push_back(std::move(o));
        out->output_slots.push_back(slot);
    }
    return true;
}

// Where each step writes: the outputs asked for at their place in the response, the
// other tensors in the plan's block.
void place(EnsemblePlan *plan, size_t first_produced) {
    auto &slots = plan->slots;
    const auto &places = plan->places;
    for (size_t s = first_produced; s < slots.size(); ++s) slots[s].place = nullptr;
    for (size_t i = 0; i < places.size(); ++i) slots[plan->response_slots[i]].place = places[i];
    auto aligned = [](size_t n) { return (n + ALIGN - 1) / ALIGN * ALIGN; };
    size_t total = 0;
    for (size_t s = first_produced; s < slots.size(); ++s)
        if (!slots[s].place) total += aligned(slots[s].nbytes);
    char *block = plan->block.reserve(total);
    for (size_t s = first_produced; s < slots.size(); ++s) {
        if (!slots[s].place) {
            slots[s].place = block;
            block += aligned(slots[s].nbytes);
        }
        slots[s].at = slots[s].place;
    }
}

// ---- Running --------------------------------------------------------------
// A Python callback that fails is not the caller's failure: its error is dropped.
void record_failure(const ModelEntry &entry, int64_t ns, int code) {
    try {
        entry.record_failure(ns, false, code);
    } catch (py::error_already_set &) {
    }
}

EnsembleOutcome refuse(const ModelEntry &ensemble, int64_t arrived_ns, Refusal refusal) {
    record_failure(ensemble, now_ns() - arrived_ns, refusal.code);
    return {EnsembleOutcome::REFUSED, std::move(refusal)};
}

// The call is over before `step` ran: as ensemble.py's _check_live says it.
bool over(const ModelEntry &ensemble, const EnsembleStep &step, int64_t deadline_ns,
          const std::function<bool()> &alive, Refusal *refusal) {
    const bool cancelled = !alive();
    if (!cancelled && !(deadline_ns && now_ns() >= deadline_ns)) return false;
    const std::string what = step.label + " of ensemble '" + ensemble.spec.name + "' ran";
    *refusal = cancelled ? Refusal{CANCELLED, "the call was cancelled before " + what}
                         : Refusal{DEADLINE_EXCEEDED, "the deadline passed before " + what};
    return true;
}

// Counted once every step has run: a step that fails leaves the whole request to the
// full path, which runs and counts it.
void count(const ModelEntry &ensemble, const EnsemblePlan &plan, const std::vector<StepTimes> &times,
           int64_t arrived_ns) {
    int64_t queue = 0, input = 0, infer = 0;
    for (size_t i = 0; i < times.size(); ++i) {
        const ModelEntry &entry = *plan.steps[i].entry;
        const StepTimes &t = times[i];
        if (!plan.steps[i].counted) {
            entry.ran(t.ran - t.fed);
            entry.tally->request(plan.steps[i].plan.rows, t.ran - t.arrived, t.start - t.arrived, t.fed - t.start,
                                 t.ran - t.fed, 0, true);
        }
        queue += t.start - t.arrived;
        input += t.fed - t.start;
        infer += t.ran - t.fed;
    }
    ensemble.tally->request(plan.rows, now_ns() - arrived_ns, queue, input, infer, 0, true);
}

// A refusal of `step`'s model, counted there and by the ensemble, in ensemble.py's words.
EnsembleOutcome step_refused(const ModelEntry &ensemble, const EnsembleStep &step, const ModelEntry &entry,
                             const Refusal &refusal, int64_t step_arrived_ns, int64_t arrived_ns) {
    record_failure(entry, now_ns() - step_arrived_ns, refusal.code);
    return refuse(ensemble, arrived_ns,
                  {refusal.code, "ensemble '" + ensemble.spec.name + "' " + step.label + " version " +
                                     entry.spec.version + " failed: " + refusal.message});
}

}  // namespace

bool plan_ensemble(const Table &table, const ModelEntry &ensemble, const Plan &plan, size_t max_response,
                   bool batches, EnsemblePlan *out) {
    const EnsembleGraph &graph = *ensemble.ensemble;
    const ModelSpec &spec = ensemble.spec;
    out->slots.assign(graph.slots, {});
    for (size_t k = 0; k < spec.inputs.size(); ++k) {
        Slot &s = out->slots[k];
        s.datatype = spec.inputs[k].datatype;
        s.shape = plan.input_shapes[k];
        s.at = plan.inputs[k];
    }
    out->steps.resize(graph.steps.size());
    for (size_t i = 0; i < graph.steps.size(); ++i)
        if (!plan_step(table, graph.steps[i], max_response, batches, &out->slots, &out->steps[i])) return false;
    out->response.clear();
    out->response_slots.clear();
    for (const size_t k : plan.outputs) {
        const size_t slot = graph.outputs[k];
        const Slot &s = out->slots[slot];
        if (slot < spec.inputs.size() || s.datatype != spec.outputs[k].datatype) return false;
        out->response.push_back({spec.outputs[k].name, s.datatype, s.shape, s.nbytes});
        out->response_slots.push_back(slot);
    }
    out->rows = plan.rows;
    return true;
}

EnsemblePlan::~EnsemblePlan() {
    for (ModelEntry *entry : held) entry->pending.fetch_sub(1);
}

bool EnsemblePlan::brief() const {
    int64_t total = 0;
    for (const auto &step : steps) {
        const int64_t avg = step.entry->run_ns.load(std::memory_order_relaxed);
        if (avg == 0) return false;
        total += avg;
    }
    return total < ModelEntry::BRIEF_RUN_NS;
}

EnsembleOutcome run_ensemble(const ModelEntry &ensemble, EnsemblePlan *plan, int64_t arrived_ns, int64_t deadline_ns,
                             const std::function<bool()> &alive, bool may_wait, Workers *workers) {
    const EnsembleGraph &graph = *ensemble.ensemble;
    if (plan->next_step == 0 && plan->held.empty()) {
        place(plan, ensemble.spec.inputs.size());
        // Each composing version counts this request as pending while it runs: an unload drains it.
        for (auto &step : plan->steps) {
            step.entry->pending.fetch_add(1);
            plan->held.push_back(step.entry.get());
        }
        plan->times.assign(plan->steps.size(), {});
    }
    std::vector<char *> outputs;
    for (size_t &i = plan->next_step; i < plan->steps.size(); ++i) {
        StepPlan &step = plan->steps[i];
        ModelEntry &entry = *step.entry;
        Refusal refusal;
        if (over(ensemble, graph.steps[i], deadline_ns, alive, &refusal)) return refuse(ensemble, arrived_ns, refusal);
        for (size_t k = 0; k < step.input_slots.size(); ++k) step.plan.inputs[k] = plan->slots[step.input_slots[k]].at;
        outputs.clear();
        for (const size_t slot : step.output_slots) outputs.push_back(plan->slots[slot].place);

        StepTimes &t = plan->times[i];
        if (t.arrived == 0) t.arrived = now_ns();  // a step tried before on a thread that might not wait
        bool by_queue = false;
        const int64_t step_deadline = entry.queue_deadline(t.arrived, deadline_ns, &by_queue);
        if (entry.batching.max_rows > 0) {  // through the model's queue, batched with its calls
            if (!may_wait) return {EnsembleOutcome::BUSY, {}};
            WaitedJob job(step.entry, step.plan, outputs, t.arrived, step_deadline, by_queue, workers);
            const WaitedJob::End end = job.queue_and_wait(alive);
            if (end.kind == WaitedJob::End::REFUSED)
                return step_refused(ensemble, graph.steps[i], entry, end.refusal, t.arrived, arrived_ns);
            if (end.kind == WaitedJob::End::FULL_PATH) return {EnsembleOutcome::FULL_PATH, {}};
            t = {t.arrived, job.start_ns, job.fed_ns, job.ran_ns};
            step.counted = true;  // the model's queue counted it
            continue;
        }
        size_t instance = 0, in_line = 0;
        const Wait wait = take_instance(entry, step_deadline, alive, &instance, &in_line, may_wait);
        if (wait == Wait::BUSY) return {EnsembleOutcome::BUSY, {}};
        if (wait != Wait::TOOK)  // as the composing model refuses it
            return step_refused(ensemble, graph.steps[i], entry, refusal_of(entry, wait, in_line, by_queue),
                                t.arrived, arrived_ns);
        const Reserved reserved(entry, instance);
        t.start = now_ns();
        try {
            t.fed = bind_and_run(entry, entry.instances[instance], step.plan.inputs, step.plan.input_shapes,
                                 step.plan.outputs, step.plan.response, outputs);
        } catch (const std::exception &) {  // the full path runs the request again: it has the error
            return {EnsembleOutcome::FULL_PATH, {}};
        }
        t.ran = now_ns();
    }
    count(ensemble, *plan, plan->times, arrived_ns);
    return {EnsembleOutcome::DONE, {}};
}

}  // namespace icow::plane
