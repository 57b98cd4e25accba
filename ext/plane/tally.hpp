// The statistics of the fast path's requests, counted in C++ with no GIL: one
// short lock per request instead of a call into Python (about 3 µs). Python's
// VersionStats takes what was counted here into its own counters whenever it is
// read (stats.py); the fields are those of VersionStats.record_request and
// record_execution.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

namespace py = pybind11;

namespace icow::plane {

class Tally {
  public:
    // `bounds_us`: the latency histogram's upper bounds (stats.LATENCY_BUCKETS_US).
    explicit Tally(std::vector<int64_t> bounds_us);

    // A request succeeded; `ran_alone`: it was a run of its own (else record_execution
    // counts its batch's run).
    void request(int64_t rows, int64_t total_ns, int64_t queue_ns, int64_t input_ns, int64_t infer_ns,
                 int64_t output_ns, bool ran_alone);
    void execution(int64_t batch_size, int64_t input_ns, int64_t infer_ns, int64_t output_ns);

    // What was counted since the last take, and counting from zero again:
    // (requests, rows, last inference ms, success ns, queue ns, input ns, infer ns,
    //  output ns, [requests per latency bucket], [(batch size, runs, input ns, infer ns, output ns)]).
    py::tuple take();

  private:
    struct Runs {
        int64_t count = 0, input_ns = 0, infer_ns = 0, output_ns = 0;
    };
    struct Counts {
        int64_t requests = 0, rows = 0, last_ms = 0, success_ns = 0, queue_ns = 0, input_ns = 0, infer_ns = 0,
                output_ns = 0;
        std::vector<int64_t> latency;  // requests per bucket, the last one +Inf
        std::map<int64_t, Runs> runs;  // by batch size
    };
    void execution_locked(int64_t batch_size, int64_t input_ns, int64_t infer_ns, int64_t output_ns);

    const std::vector<int64_t> bounds_us_;
    std::mutex mu_;
    Counts counts_;
};

}  // namespace icow::plane
