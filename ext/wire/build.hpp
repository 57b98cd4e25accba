// The ModelInferResponse builder: one bytes object of the exact size, written
// in place, with a slot per output that the model run (or one copy) fills.
#pragma once

#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "core/layout.hpp"

namespace icow {

class ResponseBuffer {
  public:
    ResponseBuffer(const std::string &model_name, const std::string &model_version, const std::string &id,
                   const std::vector<OutputSpec> &outputs);

    // Address of output i's data in the buffer, for ONNX Runtime to write into.
    uintptr_t address(size_t i) const;
    // Copy `data` (exactly the slot's size) into output i's slot.
    void write(size_t i, const pybind11::buffer &data);
    // Declare output i written by someone holding its address.
    void mark_written(size_t i);
    // The finished message; every slot must have been written. Once only.
    pybind11::bytes finish();
    size_t size() const { return size_; }

  private:
    char *data() const;
    void check_slot(size_t i) const;

    pybind11::object bytes_;  // uninitialized until written: never handed out before finish()
    size_t size_ = 0;
    std::vector<size_t> offsets_, sizes_;
    std::vector<bool> written_;
};

}  // namespace icow
