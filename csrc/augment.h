// Per-sample SSL augmentation on the CPU: uint8 images in, normalised views out, in one pass per output pixel.
// The semantics are fixed by augment_reference in fastssl/ops/augment.py.
#pragma once

#include <torch/extension.h>

namespace fastssl {

// data: flat uint8, image b = data[offsets[b] : + heights[b] * widths[b] * channels] in HWC order;
// offsets, heights, widths: int64 (B,); channels: 1 or 3;
// int_params: int64 (B, 13), float_params: float32 (B, 6), as AugmentParams.packed() lays them out;
// mean, std_dev: float32 (C,);
// out: (B, C, out_h, out_w) float32, bfloat16 or float16, any strides (contiguous and channels_last are fast).
void augment(const at::Tensor& data, const at::Tensor& offsets, const at::Tensor& heights, const at::Tensor& widths,
             int64_t channels, const at::Tensor& int_params, const at::Tensor& float_params, const at::Tensor& mean,
             const at::Tensor& std_dev, at::Tensor out);

}  // namespace fastssl
