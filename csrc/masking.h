// Masked-patch and masked-token gathers on the CPU (MAE-style masking). Shapes and semantics are those of the
// references in fastssl/ops/masking.py; the Python layer validates the arguments (ValueError naming the argument),
// these functions re-check what a wrong call could turn into an out-of-bounds access.
#pragma once

#include <torch/extension.h>

#include <tuple>

namespace fastssl {

// images (B, C, H, W), any strides, float32/float64/bfloat16/float16; ids (B, K) int64 contiguous, values in
// [0, (H / p) * (W / p)) -> (B, K, p * p * C) contiguous in the images' dtype: MAE's patchify order
// (row i, column j, channel c) -> i * p * C + j * C + c, patch index hi * (W / p) + wi. normalize: per patch
// (x - mean) / sqrt(unbiased var + 1e-6), MAE's norm_pix_loss target.
at::Tensor patchify_gather_forward(const at::Tensor& images, const at::Tensor& ids, int64_t patch_size,
                                   bool normalize);

// grad (B, K, p * p * C) contiguous -> grad_images shaped and laid out like at::empty_like(images): the patch
// gradients scattered back (summed where ids repeat), zero elsewhere; through the normalisation if normalize.
at::Tensor patchify_gather_backward(const at::Tensor& grad, const at::Tensor& images, const at::Tensor& ids,
                                    int64_t patch_size, bool normalize);

// x (B, L, D), any strides; ids (B, K) int64 contiguous in [0, L) -> (B, K, D) contiguous: out[b, k] = x[b, ids[b, k]].
at::Tensor gather_tokens_forward(const at::Tensor& x, const at::Tensor& ids);

// grad (B, K, D) contiguous -> (B, num_tokens, D): index_add of the rows (repeated ids accumulate).
at::Tensor gather_tokens_backward(const at::Tensor& grad, const at::Tensor& ids, int64_t num_tokens);

// visible (B, K, D), any strides; mask_token (D,) contiguous, same dtype; ids_restore (B, L) int64 contiguous in
// [0, L) -> (B, L, D): out[b, l] = visible[b, ids_restore[b, l]] if that index is < K, else mask_token.
at::Tensor unshuffle_with_mask_token_forward(const at::Tensor& visible, const at::Tensor& mask_token,
                                             const at::Tensor& ids_restore);

// grad (B, L, D) contiguous -> (grad_visible (B, num_visible, D), grad_mask_token (D,)): the rows routed back by
// ids_restore (summed where an index repeats), and the sum of the rows at masked positions.
std::tuple<at::Tensor, at::Tensor> unshuffle_with_mask_token_backward(const at::Tensor& grad,
                                                                      const at::Tensor& ids_restore,
                                                                      int64_t num_visible);

}  // namespace fastssl
