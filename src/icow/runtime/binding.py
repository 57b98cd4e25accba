"""IOBinding with ONNX Runtime's C binding, beneath its Python wrapper.

The wrapper (onnxruntime.IOBinding) builds a device object on every bind call
and checks for WebGPU graph capture on every run: tens of microseconds per
request, more than a small model's run. The calls below are the ones that
wrapper makes itself, with the device made once. If a future onnxruntime
moves them, ``Binder`` falls back to the public wrapper (and a test fails, so
that we notice).
"""

from __future__ import annotations

import onnxruntime as ort


class Binder:
    """Makes bindings for one session; ``run`` runs one of them."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        try:
            self.c_session = session._sess  # also bound from C++ by the native plane (services/plane.py)
            self.cpu = ort.OrtDevice.make("cpu", 0)._get_c_device()
            self.new_binding = ort.capi._pybind_state.SessionIOBinding
            # Not None: pybind11 looks None up as a foreign type first (an AttributeError made
            # and dropped, twice), which costs more than a third of a small model's run call.
            self.run_options = ort.RunOptions()
            self.fast = True
        except AttributeError:
            self.fast = False

    def bind(self, inputs: list[tuple[str, type, tuple, int]], outputs: list[tuple[str, type, tuple, int]]):
        """A binding of (name, element type, shape, address) inputs and outputs on the CPU; the
        element type is a numpy type, or ONNX's element type number (Datatype.bind)."""
        if not self.fast:
            return self._bind_public(inputs, outputs)
        binding = self.new_binding(self.c_session)
        for name, kind, shape, address in inputs:
            binding.bind_input(name, self.cpu, kind, shape, address)
        for name, kind, shape, address in outputs:
            binding.bind_output(name, self.cpu, kind, shape, address)
        return binding

    def run(self, binding) -> None:
        if self.fast:
            self.c_session.run_with_iobinding(binding, self.run_options)
        else:
            self._session.run_with_iobinding(binding)

    def _bind_public(self, inputs, outputs) -> ort.IOBinding:
        binding = self._session.io_binding()
        for name, kind, shape, address in inputs:
            binding.bind_input(name, "cpu", 0, kind, shape, address)
        for name, kind, shape, address in outputs:
            binding.bind_output(name, "cpu", 0, kind, shape, address)
        return binding
