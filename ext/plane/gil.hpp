// The GIL from threads Python did not start (gRPC's and the plane's own).
#pragma once

#include <pybind11/pybind11.h>

namespace icow::plane {

inline bool python_alive() {
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsInitialized() && !Py_IsFinalizing();
#else
    return Py_IsInitialized() && !_Py_IsFinalizing();
#endif
}

// PyGILState_Ensure makes a thread state for a thread Python has not seen and
// deletes it again on Release: microseconds per call. The first use on each
// thread keeps one alive for the thread's life.
class Gil {
  public:
    Gil() {
        thread_local bool kept = false;
        if (!kept && PyGILState_GetThisThreadState() == nullptr) {
            PyGILState_Ensure();  // never released: the thread state stays
            PyEval_SaveThread();
            kept = true;
        }
        state_ = PyGILState_Ensure();
    }
    ~Gil() { PyGILState_Release(state_); }
    Gil(const Gil &) = delete;
    Gil &operator=(const Gil &) = delete;

  private:
    PyGILState_STATE state_;
};

}  // namespace icow::plane
