#include "direct.hpp"

#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "call.hpp"
#include "core/clock.hpp"
#include "core/http_layout.hpp"
#include "core/release_gil.hpp"
#include "ensemble.hpp"
#include "gil.hpp"
#include "job.hpp"
#include "line.hpp"

namespace icow::plane {
namespace {

// Whether the caller still waits for the answer; a failing check counts as no.
bool still_wanted(const py::object &alive) {
    try {
        return alive().cast<bool>();
    } catch (const std::exception &) {
        return false;
    }
}

// A new bytes object of `size` bytes, not yet written; `*data` is where they go.
py::object new_bytes(size_t size, char **data) {
    auto bytes = py::reinterpret_steal<py::object>(PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size)));
    if (!bytes) throw py::error_already_set();
    *data = PyBytes_AS_STRING(bytes.ptr());
    return bytes;
}

// The response to `id` from `model` with `outputs`, all but their contents written;
// `places`: where each output's contents go. HTTP: the JSON header, then the binary
// outputs (`header_length`: its size).
py::object new_response(const ModelSpec &model, const std::string &id, const std::vector<OutputSpec> &outputs,
                        bool http, std::vector<char *> *places, size_t *header_length) {
    char *out = nullptr;
    py::object response;
    places->clear();
    if (!http) {
        const size_t size = response_size(model.name, model.version, id, outputs);
        response = new_bytes(size, &out);
        for (const size_t offset : write_response(out, size, model.name, model.version, id, outputs))
            places->push_back(out + offset);
        return response;
    }
    const std::string header = http_header(model.name, model.version, id, outputs);
    size_t size = header.size();
    for (const auto &o : outputs) size += o.nbytes;
    response = new_bytes(size, &out);
    std::memcpy(out, header.data(), header.size());
    *header_length = header.size();
    char *at = out + header.size();
    for (const auto &o : outputs) {
        places->push_back(at);
        at += o.nbytes;
    }
    return response;
}

// A request that leaves without running, counted as a failure (as the scheduler counts it).
py::tuple refused(const ModelEntry &entry, int64_t arrived_ns, const Refusal &refusal) {
    entry.record_failure(now_ns() - arrived_ns, false, refusal.code);  // the code: its reason (stats.py)
    return py::make_tuple(refusal.code, refusal.message, entry.spec.name, entry.spec.version);
}

}  // namespace

// ---- Serving one request --------------------------------------------------
py::object Direct::serve(const py::bytes &data, int64_t deadline_ns, const py::object &alive) {
    py::object answer = run(data, deadline_ns, alive);
    (answer.is_none() ? handed_on : served_fast).fetch_add(1, std::memory_order_relaxed);
    return answer;
}

// Parsed, looked up and checked, with no Python; nullptr: the full path serves it.
std::shared_ptr<ModelEntry> Direct::plan(const char *base, size_t size, Request *request, Plan *plan) const {
    if (!parse_for_plan(base, size, request)) return nullptr;
    auto entry = find_entry(*std::atomic_load(&table_), *request, base);
    // Dynamic batching is the Python scheduler's, unless this shares the native plane's queues.
    if (!entry || !serves(*entry) || !entry->plan(*request, base, max_message_, plan)) return nullptr;
    return entry;
}

py::object Direct::run(const py::bytes &data, int64_t deadline_ns, const py::object &alive) {
    char *base = nullptr;
    Py_ssize_t size = 0;
    if (PyBytes_AsStringAndSize(data.ptr(), &base, &size) != 0) throw py::error_already_set();
    Request request;
    Plan plan;
    std::shared_ptr<ModelEntry> entry;
    if (static_cast<size_t>(size) < RELEASE_GIL_BYTES) {
        entry = this->plan(base, static_cast<size_t>(size), &request, &plan);
    } else {  // its byte work (typed contents gathered) without the GIL; `data` is the caller's
        py::gil_scoped_release nogil;
        entry = this->plan(base, static_cast<size_t>(size), &request, &plan);
    }
    if (!entry) return py::none();
    return execute(entry, plan, std::string(base + request.id.off, request.id.len), deadline_ns, alive, Layout::GRPC,
                   true);
}

// ---- HTTP: a request Python parsed ----------------------------------------
namespace {

// `text` appended to `names`; its span there.
Span keep(std::string *names, const std::string &text) {
    const Span span{names->size(), text.size()};
    *names += text;
    return span;
}

// One input of serve_http's list into `in`; false where the full path must answer
// (an unknown datatype, a size that does not match the shape: it says why).
bool http_input(const py::handle &item, size_t body_size, std::string *names, InputTensor *in) {
    const auto t = item.cast<py::tuple>();
    const auto datatype = t[1].cast<std::string>();
    in->name = keep(names, t[0].cast<std::string>());
    in->datatype = keep(names, datatype);
    in->type = find_datatype(datatype);
    in->shape = t[2].cast<std::vector<int64_t>>();
    const auto offset = t[3].cast<size_t>(), size = t[4].cast<size_t>();
    if (!in->type || in->type->size == 0 || offset > body_size || size > body_size - offset) return false;
    uint64_t count = 1;
    for (const int64_t d : in->shape)
        if (d < 0 || __builtin_mul_overflow(count, static_cast<uint64_t>(d), &count)) return false;
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(count, in->type->size, &bytes) || bytes != size) return false;
    in->count = count;
    in->raw = Span{offset, size};
    in->has_raw = true;
    return true;
}

}  // namespace

py::object Direct::serve_http(const std::string &model, const std::string &version, const std::string &id,
                              const py::list &inputs, const py::list &outputs, const py::buffer &body,
                              int64_t deadline_ns, const py::object &alive, bool may_wait, bool brief_only) {
    const py::buffer_info info = body.request();
    const char *base = static_cast<const char *>(info.ptr);
    const auto size = static_cast<size_t>(info.size);
    auto entry = find_entry(*std::atomic_load(&table_), model, version);
    // Dynamic batching is the Python scheduler's, unless this shares the native plane's queues.
    if (!entry || !serves(*entry) || (brief_only && !entry->runs_briefly())) return py::none();
    std::string names;
    Request request;
    request.inputs.resize(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i)
        if (!http_input(inputs[i], size, &names, &request.inputs[i])) return py::none();
    request.outputs.resize(outputs.size());
    for (size_t i = 0; i < outputs.size(); ++i) request.outputs[i].name = keep(&names, outputs[i].cast<std::string>());
    Plan plan;
    if (!entry->plan(request, base, max_message_, &plan, names.data())) return py::none();
    py::object answer = execute(entry, plan, id, deadline_ns, alive, Layout::HTTP, may_wait);
    (answer.is_none() ? handed_on : served_fast).fetch_add(1, std::memory_order_relaxed);
    return answer;
}

// ---- Running a planned request ---------------------------------------------
py::object Direct::execute(const std::shared_ptr<ModelEntry> &entry, const Plan &plan, const std::string &id,
                           int64_t deadline_ns, const py::object &alive, Layout layout, bool may_wait) {
    if (entry->ensemble) return may_wait ? execute_ensemble(entry, plan, id, deadline_ns, alive, layout) : py::none();
    if (entry->batching.max_rows > 0)
        return may_wait ? execute_queued(entry, plan, id, deadline_ns, alive, layout) : py::none();
    const int64_t arrived = now_ns();
    const PendingRequest pending(*entry);
    bool by_queue = false;  // the deadline is the model's queue timeout
    deadline_ns = entry->queue_deadline(arrived, deadline_ns, &by_queue);
    size_t instance = 0, in_line = 0;
    const Wait wait = take_instance(*entry, deadline_ns, [&alive] { return still_wanted(alive); }, &instance,
                                    &in_line, may_wait);
    if (wait == Wait::BUSY) return py::none();
    if (wait != Wait::TOOK) return refused(*entry, arrived, refusal_of(*entry, wait, in_line, by_queue));

    const int64_t start = now_ns();
    int64_t fed = 0, ran = 0;
    py::object response;
    size_t header_length = 0;
    {
        const Reserved reserved(*entry, instance);
        std::vector<char *> places;
        response = new_response(entry->spec, id, plan.response, layout == Layout::HTTP, &places, &header_length);
        try {
            fed = bind_and_run(*entry, entry->instances[instance], plan.inputs, plan.input_shapes, plan.outputs,
                               plan.response, places);
        } catch (const std::exception &) {  // the full path runs it again: it reports the error, or copies
            return py::none();
        }
        ran = now_ns();
    }  // the instance goes to the next caller before the statistics are written
    entry->ran(ran - fed);
    entry->tally->request(plan.rows, ran - arrived, start - arrived, fed - start, ran - fed, 0, true);
    if (layout == Layout::HTTP) return py::make_tuple(response, header_length);
    return response;
}

// An ensemble's steps, one after the other on this thread (ensemble.hpp).
py::object Direct::execute_ensemble(const std::shared_ptr<ModelEntry> &entry, const Plan &plan, const std::string &id,
                                    int64_t deadline_ns, const py::object &alive, Layout layout) {
    const int64_t arrived = now_ns();
    EnsemblePlan ensemble;
    if (!plan_ensemble(*std::atomic_load(&table_), *entry, plan, max_message_, workers_ != nullptr, &ensemble))
        return py::none();
    const PendingRequest pending(*entry);
    size_t header_length = 0;
    py::object response =
        new_response(entry->spec, id, ensemble.response, layout == Layout::HTTP, &ensemble.places, &header_length);
    const EnsembleOutcome outcome =
        run_ensemble(*entry, &ensemble, arrived, deadline_ns, [&alive] { return still_wanted(alive); }, true,
                     workers_.get());
    if (outcome.kind == EnsembleOutcome::FULL_PATH) return py::none();
    if (outcome.kind == EnsembleOutcome::REFUSED)
        return py::make_tuple(outcome.refusal.code, outcome.refusal.message, entry->spec.name, entry->spec.version);
    if (layout == Layout::HTTP) return py::make_tuple(response, header_length);
    return response;
}

// A batching model's request, in the native plane's queue for that model (job.hpp).
py::object Direct::execute_queued(const std::shared_ptr<ModelEntry> &entry, const Plan &plan, const std::string &id,
                                  int64_t deadline_ns, const py::object &alive, Layout layout) {
    const int64_t arrived = now_ns();
    const PendingRequest pending(*entry);
    bool by_queue = false;
    deadline_ns = entry->queue_deadline(arrived, deadline_ns, &by_queue);
    std::vector<char *> places;
    size_t header_length = 0;
    py::object response = new_response(entry->spec, id, plan.response, layout == Layout::HTTP, &places, &header_length);
    WaitedJob job(entry, plan, std::move(places), arrived, deadline_ns, by_queue, workers_.get());
    const WaitedJob::End end = job.queue_and_wait([&alive] { return still_wanted(alive); });
    if (end.kind == WaitedJob::End::FULL_PATH) return py::none();
    if (end.kind == WaitedJob::End::REFUSED) return refused(*entry, arrived, end.refusal);
    if (layout == Layout::HTTP) return py::make_tuple(response, header_length);
    return response;
}

Direct::~Direct() {
    // The last hold on the plane's workers may be this one: they join their threads, which may
    // wait for the GIL (at exit, with Python going, they are left to the process's end).
    if (!workers_ || workers_.use_count() > 1) return;
    if (!python_alive()) {
        new std::shared_ptr<Workers>(std::move(workers_));
        return;
    }
    py::gil_scoped_release nogil;
    workers_.reset();
}

}  // namespace icow::plane
