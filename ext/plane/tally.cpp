#include "tally.hpp"

#include <algorithm>
#include <chrono>
#include <utility>

namespace icow::plane {

Tally::Tally(std::vector<int64_t> bounds_us) : bounds_us_(std::move(bounds_us)) {
    counts_.latency.assign(bounds_us_.size() + 1, 0);
}

void Tally::request(int64_t rows, int64_t total_ns, int64_t queue_ns, int64_t input_ns, int64_t infer_ns,
                    int64_t output_ns, bool ran_alone) {
    // as bisect.bisect_left(LATENCY_BUCKETS_US, total_ns // 1000)
    const auto bucket = std::lower_bound(bounds_us_.begin(), bounds_us_.end(), total_ns / 1000) - bounds_us_.begin();
    const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                               std::chrono::system_clock::now().time_since_epoch()).count();
    std::lock_guard<std::mutex> lock(mu_);
    if (ran_alone) execution_locked(rows, input_ns, infer_ns, output_ns);
    Counts &c = counts_;
    c.requests += 1;
    c.rows += rows;
    c.last_ms = now_ms;
    c.success_ns += total_ns;
    c.queue_ns += queue_ns;
    c.input_ns += input_ns;
    c.infer_ns += infer_ns;
    c.output_ns += output_ns;
    c.latency[bucket] += 1;
}

void Tally::execution(int64_t batch_size, int64_t input_ns, int64_t infer_ns, int64_t output_ns) {
    std::lock_guard<std::mutex> lock(mu_);
    execution_locked(batch_size, input_ns, infer_ns, output_ns);
}

void Tally::execution_locked(int64_t batch_size, int64_t input_ns, int64_t infer_ns, int64_t output_ns) {
    Runs &r = counts_.runs[batch_size];
    r.count += 1;
    r.input_ns += input_ns;
    r.infer_ns += infer_ns;
    r.output_ns += output_ns;
}

py::tuple Tally::take() {
    Counts c;
    c.latency.assign(bounds_us_.size() + 1, 0);
    {
        std::lock_guard<std::mutex> lock(mu_);
        std::swap(c, counts_);
    }
    py::list runs;
    for (const auto &[size, r] : c.runs) runs.append(py::make_tuple(size, r.count, r.input_ns, r.infer_ns, r.output_ns));
    py::list latency;
    for (const int64_t n : c.latency) latency.append(n);
    return py::make_tuple(c.requests, c.rows, c.last_ms, c.success_ns, c.queue_ns, c.input_ns, c.infer_ns,
                          c.output_ns, latency, runs);
}

}  // namespace icow::plane
