// Fused InfoNCE / NT-Xent on the CPU. The math and the shapes are fixed by notes/info_nce_kernel_contract.md.
#pragma once

#include <torch/extension.h>

#include <tuple>

namespace fastssl {

// q (N, D), k (M, D) float32/bfloat16/float16; pos, exclude (N,) int64 -> loss_rows (N,), lse (N,) float32.
// float64 inputs take a plain double-precision path and return loss_rows, lse and dscale in float64.
std::tuple<at::Tensor, at::Tensor> info_nce_forward(
    const at::Tensor& q, const at::Tensor& k, double scale, const at::Tensor& pos, const at::Tensor& exclude);

// -> dq (N, D), dk (M, D) in the input dtype, dscale 0-d float32; compute_dk = false skips dk (returned empty).
std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_backward(
    const at::Tensor& q, const at::Tensor& k, double scale, const at::Tensor& pos, const at::Tensor& exclude,
    const at::Tensor& lse, double coef, bool compute_dk);

// z (2N, D): pos_i = (i + N) mod 2N, exclude_i = i -> loss_rows (2N,), lse (2N,) float32.
std::tuple<at::Tensor, at::Tensor> nt_xent_forward(const at::Tensor& z, double scale);

// -> dz (2N, D) in the input dtype, dscale 0-d float32.
std::tuple<at::Tensor, at::Tensor> nt_xent_backward(
    const at::Tensor& z, double scale, const at::Tensor& lse, double coef);

}  // namespace fastssl
