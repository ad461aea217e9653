"""Measurements of what withdrawal saves: FLOPs (counted and analytic), latency, memory.

Each module measures one thing for the baseline model and the withdrawn model in the same call and
returns plain dicts shaped like the profile sections (see docs/profile-schema.md, docs/measurement.md).
No I/O here; :mod:`vtwcli.profiling` orchestrates and the CLI writes the YAML.
"""

from vtwcli.measure.flops import (COMPONENTS, CONVENTION, COUNTER, PromptLayout, analytic_flops, count_flops,
                                  count_flops_meta, fvcore_flops, meta_model, tokens_per_image)
from vtwcli.measure.latency import measure_latency, summarize
from vtwcli.measure.memory import kv_cache_bytes, measure_memory, peak_rss_bytes, reset_peak_rss

__all__ = ["COMPONENTS", "CONVENTION", "COUNTER", "PromptLayout", "analytic_flops", "count_flops", "count_flops_meta",
           "fvcore_flops", "meta_model", "tokens_per_image", "measure_latency", "summarize", "kv_cache_bytes",
           "measure_memory", "peak_rss_bytes", "reset_peak_rss"]
