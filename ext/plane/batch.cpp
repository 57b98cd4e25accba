// Dynamic batching on the native plane, as scheduler.BatchScheduler does it on
// the full path: the oldest waiting job, then compatible ones (same dims beyond
// the batch dim, same outputs) until the batch is full, or has a preferred size
// with nothing more waiting, or the oldest call's max_queue_delay is up. One
// ONNX Runtime run, one GIL acquisition, per batch; a batch that fails runs
// again call by call, so that only a call that must fail does.

#include <algorithm>
#include <chrono>
#include <cstring>

#include "buffers.hpp"
#include "call.hpp"
#include "core/clock.hpp"
#include "gil.hpp"

namespace icow::plane {
namespace {

// ---- Forming a batch ------------------------------------------------------
size_t bytes_of(const std::vector<int64_t> &shape, size_t itemsize) {
    size_t n = itemsize;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    return n;
}

std::vector<int64_t> with_rows(std::vector<int64_t> shape, int64_t rows) {
    shape[0] = rows;
    return shape;
}

}  // namespace

void Call::queue_for_batch() {
    const std::shared_ptr<ModelEntry> entry = entry_;  // `this` may be finished by another thread once queued
    Service *service = service_;
    size_t instance = SIZE_MAX;
    {
        std::lock_guard<std::mutex> lock(entry->mu);
        if (!wait_in_queue()) return;
        if (!entry->idle.empty()) {
            instance = entry->idle.back();
            entry->idle.pop_back();
        }
    }
    entry->more.notify_all();  // a batch being formed may take it
    if (instance != SIZE_MAX) service->workers->post([entry, instance] { batch_loop(entry, instance); });
}

void Call::batch_loop(std::shared_ptr<ModelEntry> entry, size_t instance) {
    for (;;) {
        std::vector<Job *> jobs;
        {
            std::unique_lock<std::mutex> lock(entry->mu);
            while (jobs.empty()) {  // empty again when every call of a batch left while it formed
                if (entry->waiting.empty()) {
                    entry->idle.push_back(instance);
                    return;
                }
                jobs = form_batch(*entry, lock);
            }
        }
        run_batch(*entry, instance, jobs);
    }
}

// The first waiting call and compatible ones, held in `entry.forming` while the batch
// forms: there they count against max_queue, and the expiry sweep or a cancel
// (call.cpp) takes a call out, which this sees when it wakes. `lock` holds entry.mu.
std::vector<Job *> Call::form_batch(ModelEntry &entry, std::unique_lock<std::mutex> &lock) {
    const Batching &b = entry.batching;
    auto &forming = entry.forming;
    std::vector<Job *> jobs{entry.waiting.front()};
    entry.waiting.pop_front();
    forming.push_back(jobs.front());
    while (!jobs.empty()) {
        int64_t rows = 0;
        for (const Job *job : jobs) rows += job->plan_.rows;
        const Job *oldest = jobs.front();  // one still here: a call that left may be gone
        auto found = std::find_if(entry.waiting.begin(), entry.waiting.end(), [&](const Job *c) {
            return rows + c->plan_.rows <= b.max_rows && oldest->compatible(*c);
        });
        if (found != entry.waiting.end()) {
            jobs.push_back(*found);
            forming.push_back(*found);
            entry.waiting.erase(found);
            continue;
        }
        const int64_t wait = oldest->arrived_ns_ + b.max_delay_ns - now_ns();
        const bool preferred = std::find(b.preferred.begin(), b.preferred.end(), rows) != b.preferred.end();
        if (rows >= b.max_rows || wait <= 0 || preferred) break;
        entry.more.wait_for(lock, std::chrono::nanoseconds(wait));
        jobs.erase(std::remove_if(jobs.begin(), jobs.end(), [&](Job *c) {
                       return std::find(forming.begin(), forming.end(), c) == forming.end();
                   }), jobs.end());
    }
    for (Job *job : jobs) forming.erase(std::find(forming.begin(), forming.end(), job));
    return jobs;
}

// ---- Running a batch ------------------------------------------------------
void Call::run_batch(ModelEntry &entry, size_t instance, std::vector<Job *> &jobs) {
    std::vector<Job *> live;
    for (Job *job : jobs)
        if (!job->left_early(entry)) live.push_back(job);
    if (live.size() <= 1) {
        if (!live.empty()) live[0]->run_on(entry, instance);
        return;
    }
    const Plan &plan = live[0]->plan_;
    int64_t rows = 0;
    bool batch_major = true;  // every output has one row per input row: the rows can be handed back
    for (const Job *job : live) {
        rows += job->plan_.rows;
        for (const auto &o : job->plan_.response) batch_major &= !o.shape.empty() && o.shape[0] == job->plan_.rows;
    }
    if (!batch_major) {
        for (Job *job : live) job->run_on(entry, instance);
        return;
    }
    // The inputs stacked along the batch dimension: the one copy batching adds on the way in.
    std::vector<std::vector<char>> stacked(entry.spec.inputs.size());
    std::vector<const char *> inputs;
    std::vector<std::vector<int64_t>> input_shapes;
    for (size_t k = 0; k < stacked.size(); ++k) {
        const size_t row = bytes_of(plan.input_shapes[k], entry.spec.inputs[k].itemsize) / plan.rows;
        stacked[k].resize(row * rows);
        char *at = stacked[k].data();
        for (const Job *job : live) {
            const size_t n = row * job->plan_.rows;
            std::memcpy(at, job->plan_.inputs[k], n);
            at += n;
        }
        inputs.push_back(stacked[k].data());
        input_shapes.push_back(with_rows(plan.input_shapes[k], rows));
    }
    // The batch's outputs, one after another in one buffer.
    std::vector<OutputSpec> results;
    std::vector<size_t> result_offsets;
    size_t result_bytes = 0;
    for (const auto &o : plan.response) {
        results.push_back({o.name, o.datatype, with_rows(o.shape, rows), o.nbytes / plan.rows * rows});
        result_offsets.push_back(result_bytes);
        result_bytes += results.back().nbytes;
    }
    std::vector<char> outputs(result_bytes);
    // Where each job's rows go after the run (a call's response, its header written).
    std::vector<std::vector<char *>> places;
    for (Job *job : live) places.push_back(job->batch_places(entry));
    const int64_t start = now_ns();
    int64_t fed = 0, ran = 0, done = 0;
    bool ran_ok = false;
    {
        Gil gil;
        try {
            fed = bind_and_run(entry, entry.instances[instance], inputs, input_shapes, plan.outputs, results,
                               outputs.data(), result_offsets);
            ran = now_ns();
            for (size_t i = 0; i < results.size(); ++i) {  // each call's rows into its response
                const size_t row = plan.response[i].nbytes / plan.rows;
                const char *from = outputs.data() + result_offsets[i];
                for (size_t j = 0; j < live.size(); ++j) {
                    const size_t n = row * live[j]->plan_.rows;
                    std::memcpy(places[j][i], from, n);
                    from += n;
                }
            }
            done = now_ns();
            entry.tally->execution(rows, fed - start, ran - fed, done - ran);
            for (const Job *job : live)
                entry.tally->request(job->plan_.rows, done - job->arrived_ns_, start - job->arrived_ns_, fed - start,
                                     ran - fed, done - ran, false);
            ran_ok = true;
        } catch (py::error_already_set &) {
        } catch (const std::exception &) {
        }
    }
    if (!ran_ok) {  // each alone: only a call that must fail does (it then takes the full path)
        for (Job *job : live) job->run_on(entry, instance);
        return;
    }
    for (Job *job : live) job->batch_done(start, fed, ran);
}

}  // namespace icow::plane
