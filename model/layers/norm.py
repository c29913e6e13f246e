"""RMSNorm, computed in fp32 like the reference implementations."""
import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x * rsqrt(mean(x^2) + eps) in fp32, rounded to x's dtype, then the weight (the reference order).
        # F.rms_norm is one fused kernel instead of five small ops (pow, mean, add, rsqrt, mul): a decode
        # step runs 61 of these norms, so the per-op overhead adds up; .float()/.to() are no-ops in fp32
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)

    def add_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual add before a pre-norm, and the norm: returns (norm(residual + x), residual + x).
        One call so that a fused kernel (model/kernels/pointwise.py, serving only) can do both in one pass;
        this body is the plain math, the same bits as adding and norming apart."""
        residual = residual + x
        return self(residual), residual
