// icow._plane's functions over the process's buffer pool (buffers.hpp), for
// icow.services.memory: its cap, and trimming it when calls have left it idle.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "buffers.hpp"

namespace py = pybind11;

namespace icow::plane {

void bind_buffer_pool(py::module_ &m) {
    m.def("set_buffer_pool_limit", [](size_t bytes) { buffers().set_limit(bytes); }, py::arg("bytes"),
          "Keep at most `bytes` of idle request/response blocks; unmaps what is over it now.");
    m.def(
        "trim_buffer_pool",
        [](double idle_s) {
            py::gil_scoped_release release;
            return buffers().trim(static_cast<int64_t>(idle_s * 1e9));
        },
        py::arg("idle_seconds"), "Unmap the blocks no call has taken for `idle_seconds`; the bytes given back.");
    m.def("buffer_pool_bytes", [] { return buffers().kept(); }, "Bytes kept idle in the pool now.");
    m.def("buffer_pool_limit", [] { return buffers().limit(); }, "The most bytes the pool keeps idle.");
}

}  // namespace icow::plane
