#include "models.hpp"

#include <stdexcept>

#include "ensemble.hpp"
#include "gil.hpp"

namespace icow::plane {
namespace {

// gRPC status codes (the protocol's numbers) of the refusals.
constexpr int CANCELLED = 1, DEADLINE_EXCEEDED = 4, RESOURCE_EXHAUSTED = 8, UNAVAILABLE = 14;

std::vector<int64_t> int_list(const py::handle &seq) {
    std::vector<int64_t> out;
    for (auto item : seq) out.push_back(item.cast<int64_t>());
    return out;
}

// (name, datatype, itemsize, shape, graph dims, numpy type)
void add_tensor(const py::handle &item, std::vector<TensorSpec> *specs, std::vector<BindNames> *names) {
    auto t = item.cast<py::tuple>();
    TensorSpec spec;
    spec.name = t[0].cast<std::string>();
    spec.datatype = t[1].cast<std::string>();
    spec.itemsize = t[2].cast<size_t>();
    spec.shape = int_list(t[3]);
    spec.graph = int_list(t[4]);
    names->push_back({py::str(spec.name), py::reinterpret_borrow<py::object>(t[5])});
    specs->push_back(std::move(spec));
}

// (name, slot) pairs of a step's map.
std::vector<std::pair<std::string, size_t>> slot_map(const py::handle &seq) {
    std::vector<std::pair<std::string, size_t>> out;
    for (auto item : seq) {
        auto t = item.cast<py::tuple>();
        out.emplace_back(t[0].cast<std::string>(), t[1].cast<size_t>());
    }
    return out;
}

// ([(model, version key, label, [(input, slot)], [(output, slot)])], slot count, [output slot]):
// slots below the ensemble's input count are its inputs; every slot is checked to lie below the count.
std::shared_ptr<const EnsembleGraph> ensemble_graph(const py::object &graph, size_t inputs, size_t outputs) {
    if (graph.is_none()) return nullptr;
    auto t = graph.cast<py::tuple>();
    auto out = std::make_shared<EnsembleGraph>();
    out->slots = t[1].cast<size_t>();
    for (auto item : t[0]) {
        auto s = item.cast<py::tuple>();
        out->steps.push_back({s[0].cast<std::string>(), s[1].cast<std::string>(), s[2].cast<std::string>(),
                              slot_map(s[3]), slot_map(s[4])});
    }
    for (auto slot : t[2]) out->outputs.push_back(slot.cast<size_t>());
    bool fits = out->outputs.size() == outputs && inputs <= out->slots;
    for (const size_t slot : out->outputs) fits = fits && slot < out->slots;
    for (const auto &step : out->steps)
        for (const auto *map : {&step.inputs, &step.outputs})
            for (const auto &named : *map) fits = fits && named.second < out->slots;
    if (!fits) throw std::invalid_argument("an ensemble graph's slots do not fit its tensors");
    return out;
}

}  // namespace

ModelEntry::ModelEntry(std::string name_, int64_t version_, int64_t max_batch_size_, const py::list &inputs_,
                       const py::list &outputs_, const py::list &instances_, std::shared_ptr<Tally> tally_,
                       py::object record_failure_, size_t max_queue_, int64_t queue_timeout_ns_,
                       const py::object &batching_, const py::object &ensemble_)
    : tally(std::move(tally_)), record_failure(std::move(record_failure_)), max_queue(max_queue_),
      queue_timeout_ns(queue_timeout_ns_) {
    if (!tally) throw std::invalid_argument("a ModelEntry needs its version's Tally");
    if (!batching_.is_none()) {  // (max rows, preferred sizes, max delay ns)
        auto t = batching_.cast<py::tuple>();
        batching = {t[0].cast<int64_t>(), int_list(t[1]), t[2].cast<int64_t>()};
    }
    spec.name = std::move(name_);
    spec.version = std::to_string(version_);
    spec.max_batch_size = max_batch_size_;
    for (auto item : inputs_) add_tensor(item, &spec.inputs, &input_names);
    for (auto item : outputs_) add_tensor(item, &spec.outputs, &output_names);
    ensemble = ensemble_graph(ensemble_, spec.inputs.size(), spec.outputs.size());
    for (auto item : instances_) {
        auto t = item.cast<py::tuple>();
        instances.push_back({py::reinterpret_borrow<py::object>(t[0]), py::reinterpret_borrow<py::object>(t[1]),
                             py::reinterpret_borrow<py::object>(t[2]), py::reinterpret_borrow<py::object>(t[3])});
    }
    for (size_t i = instances.size(); i-- > 0;) idle.push_back(i);
}

ModelEntry::~ModelEntry() {
    if (!python_alive()) {  // at exit: leak the Python objects rather than touch a dying interpreter
        for (auto *names : {&input_names, &output_names})
            for (auto &n : *names) n.name.release(), n.type.release();
        for (auto &i : instances)
            i.session.release(), i.new_binding.release(), i.device.release(), i.run_options.release(),
                i.binding.release();
        record_failure.release();
        return;
    }
    Gil gil;  // the last reference may go on a thread that does not hold it
    input_names.clear();
    output_names.clear();
    instances.clear();
    record_failure = py::object();
}

int64_t ModelEntry::queue_deadline(int64_t arrived_ns, int64_t call_deadline_ns, bool *by_queue) const {
    *by_queue = queue_timeout_ns && (!call_deadline_ns || arrived_ns + queue_timeout_ns < call_deadline_ns);
    return *by_queue ? arrived_ns + queue_timeout_ns : call_deadline_ns;
}

Refusal ModelEntry::queue_full(size_t waiting) const {
    return {RESOURCE_EXHAUSTED, "model '" + spec.name + "' has " + std::to_string(waiting) +
                                    " requests queued, its limit (max_queue_size); retry later"};
}

Refusal ModelEntry::expired(bool by_queue) const {
    if (by_queue) return {UNAVAILABLE, "request timed out in the queue of model '" + spec.name +
                                           "' (default_timeout_microseconds)"};
    return {DEADLINE_EXCEEDED, "deadline passed while the request waited in the queue of model '" + spec.name + "'"};
}

Refusal ModelEntry::cancelled() {
    return {CANCELLED, "the call was cancelled while it waited in the queue"};
}

}  // namespace icow::plane
