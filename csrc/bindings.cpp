// The one pybind11 module of fastssl: every C++ op binds here, one line each.
#include <torch/extension.h>

#include "augment.h"
#include "info_nce.h"
#include "masking.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // The kernels never touch Python objects, so they run without the GIL (data-loader threads keep going).
  using release_gil = py::call_guard<py::gil_scoped_release>;
  m.def("info_nce_forward", &fastssl::info_nce_forward, "InfoNCE forward: (loss_rows, lse)", release_gil());
  m.def("info_nce_backward", &fastssl::info_nce_backward, "InfoNCE backward: (dq, dk, dscale)", release_gil());
  m.def("nt_xent_forward", &fastssl::nt_xent_forward, "NT-Xent forward: (loss_rows, lse)", release_gil());
  m.def("nt_xent_backward", &fastssl::nt_xent_backward, "NT-Xent backward: (dz, dscale)", release_gil());
  m.def("augment", &fastssl::augment, "Per-sample SSL augmentation into out: (uint8 images) -> views", release_gil());
  m.def("patchify_gather_forward", &fastssl::patchify_gather_forward, "Visible patches (B, K, p*p*C)", release_gil());
  m.def("patchify_gather_backward", &fastssl::patchify_gather_backward, "Image gradient", release_gil());
  m.def("gather_tokens_forward", &fastssl::gather_tokens_forward, "x[b, ids[b, k]]: (B, K, D)", release_gil());
  m.def("gather_tokens_backward", &fastssl::gather_tokens_backward, "index_add of rows: (B, L, D)", release_gil());
  m.def("unshuffle_with_mask_token_forward", &fastssl::unshuffle_with_mask_token_forward,
        "MAE decoder input (B, L, D)", release_gil());
  m.def("unshuffle_with_mask_token_backward", &fastssl::unshuffle_with_mask_token_backward,
        "(grad_visible, grad_mask_token)", release_gil());
}
