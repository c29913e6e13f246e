"""The int4 quantizer's per-group grid search (model/quant/quantize.py) against plain min/max: on normal and
heavy-tailed weights no group ends with a larger squared error (each group keeps min/max unless a candidate
is better on the bf16 grid the kernel uses), the total is clearly lower, column weights are honoured, and the
chosen codes, scales and zeros round-trip through the kernel's packed layout."""
from __future__ import annotations

import pytest
import torch

from model.quant.kernels import gather_int4_rows, int4_mm
from model.quant.quantize import (_minmax_int4_rows, _quantize_int4_rows, quantize_int4, quantize_int4_packed,
                                  round_bf16)

G = 32


def _weights(kind: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    if kind == "normal":
        return torch.randn(256, 576, generator=gen) * 0.02
    if kind == "student-t":  # heavy tails: a few values per group far outside the rest
        normal = torch.randn(256, 576, generator=gen)
        chi2 = torch.randn(256, 576, 2, generator=gen).square().sum(-1)
        return normal / (chi2 / 2).sqrt() * 0.02
    # outlier columns, as in embedding tables: a few input channels ten times the others
    w = torch.randn(256, 576, generator=gen) * 0.02
    w[:, torch.randperm(576, generator=gen)[:12]] *= 10
    return w


def _group_errors(w: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                  column_weights: torch.Tensor | None = None) -> torch.Tensor:
    dq = (q.float() - 8) * scale.repeat_interleave(G, 1) + zero.repeat_interleave(G, 1)
    err = (dq - w).square() * (column_weights if column_weights is not None else 1)
    return err.reshape(w.shape[0], -1, G).sum(-1)


@pytest.mark.parametrize("kind", ["normal", "student-t", "outlier-columns"])
def test_search_error_is_at_most_min_max_in_every_group(kind: str) -> None:
    w = _weights(kind)
    searched, plain = _group_errors(w, *quantize_int4(w, G, search=True)), _group_errors(w, *_minmax_int4_rows(w, G))
    assert bool((searched <= plain * (1 + 1e-6)).all())
    assert searched.sum() < 0.9 * plain.sum(), (searched.sum() / plain.sum()).item()


def test_column_weights_steer_the_search() -> None:
    w = _weights("outlier-columns")
    cw = torch.ones(576)
    cw[::7] = 25.0  # errors in every 7th column cost 25x
    weighted = _quantize_int4_rows(w, G, cw)
    unweighted = _quantize_int4_rows(w, G)
    plain = _minmax_int4_rows(w, G)
    errors = {name: _group_errors(w, *r, cw) for name, r in
              {"weighted": weighted, "unweighted": unweighted, "plain": plain}.items()}
    assert bool((errors["weighted"] <= errors["plain"] * (1 + 1e-6)).all())
    assert errors["weighted"].sum() < errors["unweighted"].sum() < errors["plain"].sum()


def test_constant_and_zero_groups_are_exact() -> None:
    w = torch.zeros(64, 64)
    w[1] = 0.5
    w[2, :32] = -3.0
    q, scale, zero = quantize_int4(w, G, search=True)
    dq = (q.float() - 8) * scale.repeat_interleave(G, 1) + zero.repeat_interleave(G, 1)
    assert torch.allclose(dq, round_bf16(w), atol=1e-8)


@pytest.mark.parametrize("weighted", [False, True])
def test_searched_grid_round_trips_through_the_packed_layout(weighted: bool) -> None:
    w = _weights("student-t")
    cw = torch.linspace(0.5, 4.0, 576) if weighted else None
    q, scale, zero = _quantize_int4_rows(w, G, cw)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15
    assert torch.equal(round_bf16(scale), scale) and torch.equal(round_bf16(zero), zero)
    packed, scales_and_zeros = quantize_int4_packed(w, G, torch.device("cpu"), True, cw)
    assert torch.equal(gather_int4_rows(packed, torch.arange(w.shape[0])).to(torch.uint8), q)
    x = torch.randn(5, 576, generator=torch.Generator().manual_seed(1)).bfloat16()
    dq = (q.float() - 8) * scale.repeat_interleave(G, 1) + zero.repeat_interleave(G, 1)
    reference = x.float() @ dq.T
    y = int4_mm(x, packed, G, scales_and_zeros).float()
    assert (y - reference).abs().max() <= 2 ** -7 * reference.abs().max() + 1e-3
