// The one pybind11 module of fastssl: every C++ op binds here, one line each.
#include <torch/extension.h>

#include "augment.h"
#include "info_nce.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // The kernels never touch Python objects, so they run without the GIL (data-loader threads keep going).
  using release_gil = py::call_guard<py::gil_scoped_release>;
  m.def("info_nce_forward", &fastssl::info_nce_forward, "InfoNCE forward: (loss_rows, lse)", release_gil());
  m.def("info_nce_backward", &fastssl::info_nce_backward, "InfoNCE backward: (dq, dk, dscale)", release_gil());
  m.def("nt_xent_forward", &fastssl::nt_xent_forward, "NT-Xent forward: (loss_rows, lse)", release_gil());
  m.def("nt_xent_backward", &fastssl::nt_xent_backward, "NT-Xent backward: (dz, dscale)", release_gil());
  m.def("augment", &fastssl::augment, "Per-sample SSL augmentation into out: (uint8 images) -> views", release_gil());
}
