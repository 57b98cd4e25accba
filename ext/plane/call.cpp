#include "call.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>

#include "buffers.hpp"
#include "core/clock.hpp"
#include "ensemble.hpp"
#include "gil.hpp"

namespace icow::plane {

namespace {

// ---- Deadlines, metadata, status ------------------------------------------
// The call's deadline on the steady clock, in ns; 0: none.
int64_t steady_deadline(std::chrono::system_clock::time_point deadline) {
    if (deadline == std::chrono::system_clock::time_point::max()) return 0;
    const auto left = deadline - std::chrono::system_clock::now();
    return now_ns() + std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
}

// Metadata a server may not pass on as a client's: transport headers.
bool transport_header(grpc::string_ref key) {
    const std::string_view k(key.data(), key.size());
    return k.empty() || k[0] == ':' || k.rfind("grpc-", 0) == 0 || k == "user-agent" || k == "te" ||
           k == "content-type" || k == "host";
}

grpc::Status status(const Refusal &refusal) {
    return grpc::Status(static_cast<grpc::StatusCode>(refusal.code), refusal.message);
}

}  // namespace

// ---- The backend's reactor (the Call holds one) ---------------------------
// The client side of the way through: every event goes to the Call.
class Call::Backend final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
  public:
    explicit Backend(Call *call) : call_(call) {}
    void OnReadInitialMetadataDone(bool) override { call_->backend_initial_metadata(); }
    void OnReadDone(bool ok) override { call_->backend_read_done(ok); }
    void OnWriteDone(bool ok) override { call_->backend_write_done(ok); }
    void OnDone(const grpc::Status &status) override { call_->backend_done(status); }

  private:
    Call *call_;
};

// ---- The call's events, and its end ---------------------------------------
Call::Call(Service *service, grpc::GenericCallbackServerContext *context)
    : alive_(service->calls), service_(service), context_(context) {
    workers_ = service_->workers.get();
    const size_t limit = service_->options.max_concurrent;
    if (service_->in_flight.fetch_add(1) >= limit && limit) {
        Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!"));
        return;
    }
    const bool infer = context_->method() == MODEL_INFER;
    if (infer && (service_->options.echo || service_->fast.load())) {
        StartRead(&up_);
    } else if (service_->backend) {
        hand_on(false);
    } else {
        Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "method " + context_->method() + " is not served here"));
    }
}

Call::~Call() {
    if (block_ != nullptr) buffers().put(block_, block_capacity_);
}

void Call::OnReadDone(bool ok) {
    if (!proxying_.load()) {
        first_message(ok);
        return;
    }
    if (ok) {  // the client's next message, on to the backend
        backend_->StartWrite(&up_);
        return;
    }
    backend_->StartWritesDone();  // the client is done sending
    backend_->RemoveHold();
}

void Call::OnWriteDone(bool ok) {
    if (!proxying_.load()) return;  // the fast path's answer went with Finish
    if (ok) {
        backend_->StartRead(&down_);
    } else {  // the client is gone: no more reads from the backend
        client_context_.TryCancel();
        backend_->RemoveHold();
    }
}

void Call::OnCancel() {
    cancelled_.store(true);
    if (proxying_.load()) client_context_.TryCancel();
    if (queued_.load()) leave_queue();
}

// A cancelled call (or one whose deadline passed) gives its place in the queue up at once.
void Call::leave_queue() {
    {
        std::lock_guard<std::mutex> lock(entry_->mu);
        auto found = std::find(entry_->waiting.begin(), entry_->waiting.end(), this);
        if (found != entry_->waiting.end()) {
            entry_->waiting.erase(found);
        } else {
            auto &forming = entry_->forming;
            auto in_batch = std::find(forming.begin(), forming.end(), this);
            if (in_batch == forming.end()) return;  // an instance has taken it: it sees cancelled_
            forming.erase(in_batch);
            entry_->more.notify_all();  // the batch being formed drops it
        }
    }
    service_->workers->post([this] {
        finish_failed(status(ModelEntry::cancelled()));
    });
}

void Call::OnDone() {
    service_->in_flight.fetch_sub(1);
    release();
}

void Call::release() {
    if (refs_.fetch_sub(1) == 1) delete this;
}

// ---- The fast path: the request read, planned and scheduled ---------------
void Call::first_message(bool ok) {
    if (!ok) {
        Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the call carried no request message"));
        return;
    }
    if (service_->options.echo) {
        response_ = up_;  // shares the slices: the floor of this plane
        service_->served_fast.fetch_add(1, std::memory_order_relaxed);
        StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
        return;
    }
    arrived_ns_ = now_ns();
    if (plan()) {
        schedule();
    } else {
        hand_on(true);
    }
}

// The request in one piece: its only slice, or (a large request arrives in many)
// one copy into a pooled block.
bool Call::contiguous_request() {
    if (up_.TrySingleSlice(&slice_).ok()) {
        data_ = reinterpret_cast<const char *>(slice_.begin());
        size_ = slice_.size();
        return true;
    }
    std::vector<grpc::Slice> slices;
    if (!up_.Dump(&slices).ok()) return false;
    size_ = up_.Length();
    block_ = buffers().take(std::max(size_, BufferPool::MIN_SIZE), &block_capacity_);
    char *at = block_;
    for (const auto &s : slices) {
        std::memcpy(at, s.begin(), s.size());
        at += s.size();
    }
    data_ = block_;
    return true;
}

bool Call::plan() {
    if (!contiguous_request()) return false;
    const char *base = data_;
    if (!parse_for_plan(base, size_, &request_)) return false;
    const std::string_view model(base + request_.model_name.off, request_.model_name.len);
    if (!service_->tokens.empty() && !service_->token_allows(context_, model)) return false;
    entry_ = find_entry(*service_->table(), request_, base);
    return entry_ && entry_->plan(request_, base, service_->options.max_message, &plan_);
}

void Call::schedule() {
    entry_->pending.fetch_add(1);  // until the call is answered or handed on (done())
    deadline_ns_ = steady_deadline(context_->deadline());
    deadline_ns_ = entry_->queue_deadline(arrived_ns_, deadline_ns_, &queue_timeout_);
    if (entry_->ensemble) {
        start_ensemble();
        return;
    }
    if (entry_->batching.max_rows > 0) {
        queue_for_batch();
        return;
    }
    size_t instance;
    {
        std::lock_guard<std::mutex> lock(entry_->mu);
        if (entry_->idle.empty()) {
            wait_in_queue();
            return;
        }
        instance = entry_->idle.back();
        entry_->idle.pop_back();
    }
    if (entry_->runs_briefly()) {
        execute(this, instance, true);  // a hand-off to a worker would cost more than the run
    } else {
        service_->workers->post([this, instance] { execute(this, instance, false); });
    }
}

// A request that leaves without running: counted as a failure, as icow's scheduler does.
void Call::finish_failed(const grpc::Status &status) {
    {
        Gil gil;
        try {
            entry_->record_failure(now_ns() - arrived_ns_, false, static_cast<int>(status.error_code()));
        } catch (py::error_already_set &) {
        }
    }
    entry_->pending.fetch_sub(1);
    Finish(status);
}

void Call::take_over(Job *job, size_t instance) {
    job->workers_->post([job, instance] { execute(job, instance, false); });
}

void Call::execute(Job *job, size_t instance, bool inline_run) {
    // Each job leaves its instance to the next one waiting. A job may be gone
    // once it has finished: nothing of it is touched after.
    const std::shared_ptr<ModelEntry> entry = job->entry_;
    for (;;) {
        job->run_on(*entry, instance);
        std::lock_guard<std::mutex> lock(entry->mu);
        if (entry->waiting.empty()) {
            if (!entry->hand_to_waiter(instance, 0)) entry->idle.push_back(instance);
            return;
        }
        if (entry->hand_to_waiter(instance, entry->waiting.front()->arrived_ns())) return;  // an HTTP request came first
        job = entry->waiting.front();
        entry->waiting.pop_front();
        if (inline_run) {  // a gRPC thread runs one job at most: the queue goes to a worker
            job->workers_->post([job, instance] { execute(job, instance, false); });
            return;
        }
    }
}

// ---- An ensemble ----------------------------------------------------------
void Call::start_ensemble() {
    ensemble_ = std::make_unique<EnsemblePlan>();
    if (!plan_ensemble(*service_->table(), *entry_, plan_, service_->options.max_message, true,
                       ensemble_.get())) {
        entry_->pending.fetch_sub(1);
        hand_on(true);
        return;
    }
    ensemble_->places = lay_out_response(entry_->spec, ensemble_->response);
    if (ensemble_->brief()) {  // a hand-off to the pool would cost more than the runs, if no step waits
        EnsembleOutcome outcome;
        {
            Gil gil;
            outcome = run_ensemble(*entry_, ensemble_.get(), arrived_ns_, deadline_ns_,
                                   [this] { return !cancelled_.load(); }, false);
        }
        if (outcome.kind != EnsembleOutcome::BUSY) {
            finish_ensemble(outcome);
            return;
        }
    }
    // Its steps wait in their models' lines: on a thread that may block, never a model worker.
    service_->ensembles.post([this] { continue_ensemble(); });
}

void Call::continue_ensemble() {
    EnsembleOutcome outcome;
    {
        Gil gil;
        outcome = run_ensemble(*entry_, ensemble_.get(), arrived_ns_, deadline_ns_,
                               [this] { return !cancelled_.load(); }, true, service_->workers.get());
    }
    finish_ensemble(outcome);
}

void Call::finish_ensemble(const EnsembleOutcome &outcome) {
    ensemble_.reset();  // the composing models' pending counts go with it
    if (outcome.kind == EnsembleOutcome::DONE) {
        answer(response_slice_);
        return;
    }
    entry_->pending.fetch_sub(1);
    if (outcome.kind == EnsembleOutcome::FULL_PATH) {
        hand_on(true);
    } else {
        Finish(status(outcome.refusal));
    }
}

// ---- The model's queue ----------------------------------------------------
// Into the model's queue (its lock held), or refused when the queue is full.
// True when queued: from then on another thread may take and finish this call.
bool Call::wait_in_queue() {
    // The HTTP lane's line too, and the calls in batches being formed: all still wait.
    const size_t in_line = entry_->waiting.size() + entry_->direct_waiting.size() + entry_->forming.size();
    if (entry_->max_queue && in_line >= entry_->max_queue) {
        service_->workers->post([this, refusal = entry_->queue_full(in_line)] {
            finish_failed(status(refusal));
        });
        return false;
    }
    entry_->waiting.push_back(this);
    queued_.store(true);
    if (cancelled_.load()) {  // OnCancel ran before queued_ was set
        entry_->waiting.pop_back();
        service_->workers->post([this] { finish_failed(status(ModelEntry::cancelled())); });
        return false;
    }
    if (deadline_ns_) service_->expiry.watch(entry_, deadline_ns_);
    return true;
}

int64_t Call::expire_waiting(ModelEntry &entry, int64_t now_ns) {
    std::vector<Job *> due;
    int64_t next = 0;
    // Out of the queue or a batch being formed: no instance can take it now.
    auto sweep = [&](auto &calls) {
        for (auto it = calls.begin(); it != calls.end();) {
            Job *job = *it;
            const int64_t deadline = job->deadline_ns_;
            if (deadline && deadline <= now_ns) {
                due.push_back(job);
                it = calls.erase(it);
                continue;
            }
            if (deadline) next = next ? std::min(next, deadline) : deadline;
            ++it;
        }
    };
    {
        std::lock_guard<std::mutex> lock(entry.mu);
        sweep(entry.waiting);
        const size_t was_forming = entry.forming.size();
        sweep(entry.forming);
        if (entry.forming.size() != was_forming) entry.more.notify_all();  // the batch drops them
    }
    for (Job *job : due) job->workers_->post([job, refusal = entry.expired(job->queue_timeout_)] { job->fail(refusal); });
    return next;
}

// ---- The run, and the answer ----------------------------------------------
// The answer: sent as it is, the call finished.
void Call::answer(grpc::Slice &response) {
    entry_->pending.fetch_sub(1);
    service_->served_fast.fetch_add(1, std::memory_order_relaxed);
    response_ = grpc::ByteBuffer(&response, 1);
    StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
}

void Call::fail(const Refusal &refusal) { finish_failed(status(refusal)); }

std::vector<char *> Call::batch_places(const ModelEntry &entry) { return lay_out_response(entry.spec, plan_.response); }

// This call's response from `model` with `outputs` in response_slice_, all but the outputs'
// contents written; where each output's contents go.
std::vector<char *> Call::lay_out_response(const ModelSpec &model, const std::vector<OutputSpec> &outputs) {
    const std::string id(data_ + request_.id.off, request_.id.len);
    const size_t size = response_size(model.name, model.version, id, outputs);
    response_slice_ = buffers().slice(size);
    char *data = reinterpret_cast<char *>(const_cast<uint8_t *>(response_slice_.begin()));
    std::vector<char *> places;
    for (const size_t offset : write_response(data, size, model.name, model.version, id, outputs))
        places.push_back(data + offset);
    return places;
}

void Call::batch_done(int64_t, int64_t, int64_t) { answer(response_slice_); }

void Call::run_on(const ModelEntry &entry, size_t instance) {
    if (left_early(entry)) return;
    const std::string id(data_ + request_.id.off, request_.id.len);
    const size_t size = response_size(entry.spec.name, entry.spec.version, id, plan_.response);
    grpc::Slice out = buffers().slice(size);
    char *data = reinterpret_cast<char *>(const_cast<uint8_t *>(out.begin()));
    const auto offsets = write_response(data, size, entry.spec.name, entry.spec.version, id, plan_.response);
    if (!run_bound(entry, entry.instances[instance], data, offsets)) {
        entry_->pending.fetch_sub(1);
        hand_on(true);  // the full path runs it again (and counts it): it has the error, or the fallback
        return;
    }
    answer(out);
}

// Inputs bound where they lie in the request, outputs into their place in the
// response (or staged: binding.hpp); one ONNX Runtime run, under the GIL.
bool Call::run_bound(const ModelEntry &entry, const Instance &instance, char *response,
                     const std::vector<size_t> &offsets) {
    const int64_t start = now_ns();
    int64_t fed = 0;
    {
        Gil gil;
        try {
            fed = bind_and_run(entry, instance, plan_.inputs, plan_.input_shapes, plan_.outputs, plan_.response,
                               response, offsets);
        } catch (const std::exception &) {  // a Python error is cleared here; the full path reports it
            return false;
        }
    }
    const int64_t ran = now_ns();
    entry.ran(ran - fed);
    entry.tally->request(plan_.rows, ran - arrived_ns_, start - arrived_ns_, fed - start, ran - fed, 0, true);
    return true;
}

// ---- The way through to the backend ---------------------------------------
// Messages pumped both ways, one in flight each way; metadata, deadline and
// cancellation passed on; its status back. Each pump is a chain (read one side,
// write the other, on that write's end read again), so neither side ever has
// two operations of a kind in flight.
void Call::hand_on(bool have_first) {
    service_->handed_on.fetch_add(1, std::memory_order_relaxed);
    proxying_.store(true);
    refs_.fetch_add(1);
    for (const auto &[key, value] : context_->client_metadata())
        if (!transport_header(key) && key != PEER_HEADER)
            client_context_.AddMetadata(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
    client_context_.AddMetadata(PEER_HEADER, context_->peer());
    client_context_.set_deadline(context_->deadline());
    backend_ = std::make_unique<Backend>(this);
    service_->backend->PrepareBidiStreamingCall(&client_context_, context_->method(), grpc::StubOptions(),
                                                backend_.get());
    // Two holds keep the backend call from ending (OnDone) while this side may still act on it:
    // one until the client has sent its last message (writes start from this side's reactions),
    // one until the backend's last message has gone to the client (so is no write of ours).
    backend_->AddMultipleHolds(2);
    if (have_first) {
        backend_->StartWrite(&up_);
    } else {
        StartRead(&up_);
    }
    backend_->StartRead(&down_);
    backend_->StartCall();
    if (cancelled_.load()) client_context_.TryCancel();
}

void Call::backend_write_done(bool ok) {
    if (ok) {
        StartRead(&up_);
    } else {  // the backend's side has ended: it sends its status
        backend_->RemoveHold();
    }
}

void Call::backend_read_done(bool ok) {
    if (ok) {
        StartWrite(&down_);  // then OnWriteDone reads the next one
    } else {
        backend_->RemoveHold();  // the backend has said all: its status follows
    }
}

void Call::backend_initial_metadata() {
    for (const auto &[key, value] : client_context_.GetServerInitialMetadata())
        if (!transport_header(key)) context_->AddInitialMetadata(std::string(key.data(), key.size()),
                                                                 std::string(value.data(), value.size()));
}

void Call::backend_done(const grpc::Status &status) {
    for (const auto &[key, value] : client_context_.GetServerTrailingMetadata())
        if (!transport_header(key)) context_->AddTrailingMetadata(std::string(key.data(), key.size()),
                                                                  std::string(value.data(), value.size()));
    Finish(status);
    release();
}

}  // namespace icow::plane
