"""torch's FLOP counter as vtwcli runs it: :class:`torch.utils.flop_counter.FlopCounterMode` plus formulas for the
kernels torch's counter has none for (it would count them 0).

* SDPA's fused CPU kernel and the backend-override kernel: torch's own ``sdpa_flop_count`` (both attention
  matmuls over the full q x k grid), so eager and SDPA attention count the same.
* ``aten._grouped_mm`` (transformers' grouped MoE experts): one row per (token, routed expert) pair, so the
  experts each token is routed to, never all of them.
* ``aten.linalg_solve_triangular`` (transformers' chunked Gated DeltaNet, Qwen3.5: two unit-triangular solves per
  64-token chunk): charged as the product by the inverse, ``2 x n x n x columns`` for an n x n system, i.e. the
  full grid, as attention is charged on the full q x k grid rather than the causal triangle (and what the same
  code multiplies on its export path, which builds the inverse and then runs those products as matmuls).
"""

from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = ["custom_mapping", "new_counter"]


def _sdpa_formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _grouped_mm_formula(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    # MoE experts (transformers' grouped_mm experts): each row of `a` is one (token, routed expert) pair, so
    # 2 x output elements x inner dim counts exactly the experts each token is routed to.
    return 2 * math.prod(out_shape) * a_shape[-1]


def _solve_triangular_formula(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    # A X = B (or X A = B, left=False) with A n x n: every element of X costs n multiply-adds on the full grid.
    return 2 * math.prod(out_shape) * a_shape[-1]


def custom_mapping() -> dict:
    """Formulas for the kernels torch's counter has none for (see the module doc)."""
    mapping = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable"):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            mapping[op] = _sdpa_formula
    for name, formula in (("_grouped_mm", _grouped_mm_formula), ("linalg_solve_triangular", _solve_triangular_formula)):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            mapping[op] = formula
    return mapping


def new_counter() -> FlopCounterMode:
    """A counter attributing FLOPs to every module (``depth=None``), with :func:`custom_mapping`."""
    return FlopCounterMode(display=False, depth=None, custom_mapping=custom_mapping())
