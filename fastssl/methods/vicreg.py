"""VICReg: Bardes, Ponce and LeCun, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
Learning", ICLR 2022.

Both views go through the backbone and an expander (three Linear layers of 8192, BN + ReLU after the first two).
With the expanded embeddings Z, Z' (batch_size, dim), the loss is

    lambda * s(Z, Z') + mu * (v(Z) + v(Z')) / 2 + nu * (c(Z) + c(Z'))

    invariance  s = mean squared distance ||z_i - z'_i||^2 / dim, averaged over the batch
    variance    v = mean_j max(0, 1 - sqrt(Var(Z_.j) + 1e-4)): each dimension keeps a std of at least 1 over the batch
    covariance  c = sum_{i != j} Cov(Z)_ij^2 / dim: the dimensions are decorrelated

as the official code computes it (unbiased variance and covariance). Both branches receive gradients; nothing is
stopped. In a multi-process run every rank's rows are gathered with their gradients (the official FullGatherLayer:
``gather_with_grad``), so the statistics are those of the global batch.

Defaults (the paper's): lambda = mu = 25, nu = 1; expander 8192-8192-8192 after ResNet-50's 2048 features, i.e.
4 x the backbone's feature width (``None``; 512 for the CPU default ResNet-18 at width 0.25); LARS, weight decay
1e-6, warm-up then cosine decay, batch 2048; BYOL's augmentation. The paper's lr, base 0.2 x batch / 256, is 1.6
at its batch of 2048; fastssl reaches that value there but scales it with the square root of the batch (as
SimCLR's Appendix B.1 does for small batches), so batch 256 gets 1.6 / sqrt(8) = 0.57 instead of 0.2 (measured on
CIFAR-10, 2 CPU minutes at batch 256: kNN on a 10k / 2k split +0.8 points over random initialisation at lr 0.2,
+3.7 at lr 1.0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastssl.methods.base import Method, expander_dims
from fastssl.models import VICRegProjectionHead
from fastssl.nn import gather_with_grad

VARIANCE_EPS = 1e-4  # inside the square root of the variance term (the official code's value)


def _off_diagonal_square_sum(matrix: torch.Tensor) -> torch.Tensor:
    return matrix.pow(2).sum() - torch.diagonal(matrix).pow(2).sum()


def vicreg_terms(z_a: torch.Tensor, z_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (invariance, variance, covariance) terms of (batch_size, dim) embeddings, before their coefficients;
    variance and covariance already averaged / summed over the two branches as the loss uses them."""
    n, dim = z_a.shape
    invariance = F.mse_loss(z_a, z_b)
    z_a, z_b = z_a - z_a.mean(dim=0), z_b - z_b.mean(dim=0)
    std_a = torch.sqrt(z_a.var(dim=0) + VARIANCE_EPS)
    std_b = torch.sqrt(z_b.var(dim=0) + VARIANCE_EPS)
    variance = F.relu(1 - std_a).mean() / 2 + F.relu(1 - std_b).mean() / 2
    cov_a = z_a.T @ z_a / (n - 1)  # (dim, dim)
    cov_b = z_b.T @ z_b / (n - 1)
    covariance = (_off_diagonal_square_sum(cov_a) + _off_diagonal_square_sum(cov_b)) / dim
    return invariance, variance, covariance


class VICReg(Method):
    name = "vicreg"
    preset = "byol"
    defaults = {"optimizer": "lars", "lr": 0.2 * 8 ** 0.5, "lr_scaling": "sqrt", "weight_decay": 1e-6}
    options = {"sim_coeff": 25.0, "std_coeff": 25.0, "cov_coeff": 1.0, "proj_hidden_dim": None, "proj_dim": None}

    def __init__(self, backbone, backbone_spec, sim_coeff: float, std_coeff: float, cov_coeff: float,
                 proj_hidden_dim, proj_dim, **base):
        super().__init__(backbone, backbone_spec, **base)
        for key, value in (("sim_coeff", sim_coeff), ("std_coeff", std_coeff), ("cov_coeff", cov_coeff)):
            if not value >= 0:
                raise ValueError(f"{key}: expected >= 0, got {value!r}")
        proj_hidden_dim, proj_dim = expander_dims(backbone.num_features, proj_hidden_dim, proj_dim)
        self.coefficients = (float(sim_coeff), float(std_coeff), float(cov_coeff))
        self.projector = VICRegProjectionHead(backbone.num_features, proj_hidden_dim, proj_dim)
        self._terms = torch.zeros(3)

    def forward(self, views, step: int = 0, horizon: int = 1):
        """views: 2 x (batch_size, C, H, W) -> 2 x (batch_size, proj_dim) embeddings. Each view goes through the
        network on its own, as in the official code (BN statistics per view)."""
        return tuple(self.projector(self.backbone(view)) for view in views[:2])

    def loss(self, outputs):
        z_a, z_b = outputs
        # float32 without autocast: the covariance sums batch_size products per entry.
        with torch.autocast(z_a.device.type, enabled=False):
            z_a, z_b = z_a.float(), z_b.float()
            if self.distributed:
                z_a, z_b = gather_with_grad(z_a, "z_a"), gather_with_grad(z_b, "z_b")
            terms = vicreg_terms(z_a, z_b)
        self._terms = torch.stack(terms).detach()
        return sum(c * t for c, t in zip(self.coefficients, terms))

    def logs(self):
        invariance, variance, covariance = self._terms.tolist()
        return {"invariance": invariance, "variance": variance, "covariance": covariance}
