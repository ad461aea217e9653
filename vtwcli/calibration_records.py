"""What `vtw calibrate` trusts: a checkpointed batch is used only if it has the shape this run's batch
would have (rows, layers, finite values), and a freshly computed KL that is not finite is refused rather
than left to decide K (NaN <= threshold is False for every layer)."""

from __future__ import annotations

import math

from vtwcli.errors import VtwError

__all__ = ["kl_record_problem", "answers_record_problem", "refuse_non_finite_kl"]


def _finite_number(value, minimum: float = 0.0) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value >= minimum)


def kl_record_problem(value, rows: int, layers: int) -> str | None:
    """What makes a checkpointed KL batch unfit for this batch (None if it fits)."""
    if not isinstance(value, dict) or set(value) != {"kl", "work_full", "work_candidates", "share"}:
        return "not a KL batch"
    kl = value["kl"]
    if not isinstance(kl, list) or len(kl) != rows:
        return f"{len(kl) if isinstance(kl, list) else 'no'} rows for a batch of {rows} samples"
    if any(not isinstance(row, list) or len(row) != layers or not all(_finite_number(v) for v in row) for row in kl):
        return f"a row is not {layers} finite KL values >= 0"
    if not (isinstance(value["work_full"], int) and value["work_full"] > 0
            and isinstance(value["work_candidates"], int) and value["work_candidates"] >= 0):
        return "bad work counts"
    if value["share"] is not None and not isinstance(value["share"], list):
        return "bad attention shares"
    return None


def answers_record_problem(value, rows: int) -> str | None:
    """What makes a checkpointed batch of greedy answers unfit for this batch (None if it fits)."""
    if not isinstance(value, list) or len(value) != rows or not all(isinstance(a, str) for a in value):
        return f"not {rows} answers"
    return None


def refuse_non_finite_kl(kl: list, chunk, layers: list[int]) -> None:
    """NaN or inf KL (a float16 overflow, broken weights) must not decide K silently: NaN <= t is False."""
    for sample, row in zip(chunk, kl):
        bad = next((layer for layer, value in zip(layers, row) if not math.isfinite(value)), None)
        if bad is not None:
            raise VtwError(f"{sample.where()}: the KL at layer {bad} is not a finite number (the model's outputs "
                           "overflow or are NaN); use --dtype float32 or check the model's weights")
