"""Greedy tokens without reading the whole fp32/bf16 lm_head: an int8 copy finds the few tokens that can win,
and only their rows get the exact product.

Why: at one sequence a decode step is bound by reading weights, and a tied vocabulary table is a fifth of a
small model (the default model's 49,152 x 576 lm_head: 113 MB of 540 in fp32, 57 of 270 in bf16). A greedy
row needs one fact from it, the index of the largest logit. The int8 copy (one scale per row, 28 MB) gives
every logit to within a bound, the rows whose bound reaches the best lower bound are the candidates, and the
real lm_head kernel computes those rows alone. A row's value from the kernel does not depend on which other
rows are in the call (csrc/linear.c: each output is its own accumulator and lane tree), so the candidates'
logits are the full product's bit for bit, every other token is strictly below one of them, and the argmax
(ties to the lowest index, as torch.argmax) is the full product's: the same tokens, tested.

The bound, per row i of W and x the final hidden state (all terms rounded up when they are built):
  |a_i - t_i| <= ||x||_1 * max_j |w_ij - q_ij s_i|        (the int8 copy's own error)
              + step * s_i * sum_j |q_ij|                   (x rounded to int16 in the int8 kernel, <= 0.51 step)
              + 2^-23 |a_i|                                 (the int8 kernel's one float rounding)
  |f_i - t_i| <= gamma_K ||x||_2 ||w_i||_2                  (the fp32 sums of the exact kernel)
              + 2^-8 ||x||_2 ||w_i||_2                      (bf16 only: the output's rounding)
where a is the screen, f the exact kernel and t the real dot product. Everything else in the step (the
sampler, its processing) sees a logits row that is -inf outside the candidates, so the runner uses this only
for rows whose token is the plain argmax: temperature 0, no logprobs, bias, penalties, processors or banned
tokens, no draft rows (ModelRunner.run checks).

Written here, not taken from a library: no serving library we could find screens a float lm_head this way;
llama.cpp and vLLM read the whole table every step.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from model.kernels import linear, qlinear, screen
from model.quant.quantize import quantize_int8

log = logging.getLogger("glmserve.engine")

# past this many candidate tokens in a step the exact product of the whole table is cheaper than gathering them
# (a model whose logits are nearly flat, e.g. random weights): that step takes the full lm_head
MAX_CANDIDATES = 2048
_U = 2.0 ** -24  # fp32 unit roundoff


class GreedyScreen:
    """Built once per runner from the lm_head when it is the C kernel on fp32 or bf16 weights (`build`
    returns None otherwise). `logits(hidden)` returns (rows, vocab) fp32 logits that are exact at every token
    that can be a row's argmax and -inf elsewhere, or None when the step should take the full product."""

    def __init__(self, lm_head: linear.KernelLinear, codes: torch.Tensor, scales: torch.Tensor,
                 weight_norm: torch.Tensor, code_error: torch.Tensor, code_mass: torch.Tensor) -> None:
        self.lm_head = lm_head
        self.codes, self.scales = codes, scales
        self.weight_norm, self.code_error, self.code_mass = weight_norm, code_error, code_mass
        k = lm_head.in_features
        gamma = k * _U / (1 - k * _U)
        # ||x||_2 ||w||_2 bounds the exact kernel's error (and |t|, for the 2^-23 |a| and the roundings below)
        self.norm_coefficient = gamma + (2.0 ** -8 if lm_head.weight.dtype is torch.bfloat16 else 0.0) + 2.0 ** -20
        self.steps = self.fallbacks = self.candidates = 0  # screened steps, steps past MAX_CANDIDATES, tokens
        self.max_rows = 1 << 30  # the runner sets what its start-up timing found (cpu_choices)
        # the candidate pass's output (cut to MAX_CANDIDATES at each call: the module's constant is the cap) and
        # its union marks, reused every step
        self._chosen = torch.empty(MAX_CANDIDATES, dtype=torch.long)
        self._marks = torch.empty(codes.shape[0], dtype=torch.uint8)

    @classmethod
    @torch.inference_mode()
    def build(cls, lm_head: nn.Module) -> "GreedyScreen | None":
        # a KernelLinear has a kernel only for a contiguous fp32/bf16 CPU weight (model/kernels/linear.py)
        if (type(lm_head) is not linear.KernelLinear or lm_head.kernel is None or lm_head.bias is not None
                or not qlinear.available() or not screen.available()):
            return None
        w = lm_head.weight
        if not bool(torch.isfinite(w).all()):
            return None  # an infinite or NaN weight has no int8 bound
        codes, scales = quantize_int8(w)
        norms, errors, masses = [], [], []
        for lo in range(0, w.shape[0], 4096):  # fp64 temporaries of a slice, not of the table
            ws = w[lo:lo + 4096].double()
            q, s = codes[lo:lo + 4096].double(), scales[lo:lo + 4096].double().unsqueeze(1)
            norms.append(ws.norm(dim=1))
            errors.append((ws - q * s).abs().amax(dim=1))
            masses.append((q.abs().sum(dim=1, keepdim=True) * s).squeeze(1))
        up = 1 + 2.0 ** -22  # fp64 -> fp32 rounds to nearest: one ulp up keeps each an upper bound

        def bound(parts: list[torch.Tensor]) -> torch.Tensor:
            return (torch.cat(parts) * up).float().contiguous()

        built = cls(lm_head, codes, scales, bound(norms), bound(errors), bound(masses))
        log.info("greedy screen: int8 copy of the %d x %d lm_head (%.1f MB beside %.1f MB)", w.shape[0],
                 w.shape[1], codes.numel() / 1e6, w.numel() * w.element_size() / 1e6)
        return built

    def screen_pass(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (rows, K) fp32 contiguous -> the int8 copy's logits (rows, V) and the candidate token ids, or None
        (too many, or a NaN / infinity somewhere). What the start-up timing measures, too."""
        approx = qlinear.int8_linear(x, self.codes, self.scales)
        return approx, screen.candidates(x, approx, self.weight_norm, self.code_error, self.code_mass,
                                         self.norm_coefficient, self._chosen[:MAX_CANDIDATES], self._marks)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """hidden (rows, K) in the lm_head's dtype."""
        hidden = hidden.contiguous()
        approx, chosen = self.screen_pass(hidden.float())
        self.steps += 1
        if chosen is None:  # the full product decides
            self.fallbacks += 1
            return None
        self.candidates += chosen.numel()
        exact = linear.linear(hidden, self.lm_head.weight.index_select(0, chosen)).float()
        return approx.fill_(float("-inf")).index_copy_(1, chosen, exact)  # the screen's buffer, read already
