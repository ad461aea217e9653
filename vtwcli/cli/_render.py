"""Rendering shared by the commands: rich tables, the terminal KL chart, the PNG plot, output paths."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from rich.table import Table
from rich.text import Text

from vtwcli.cli._state import err_console
from vtwcli.errors import VtwError


def json_text(data) -> str:
    """``--json`` output that strict parsers accept: a ratio that is not a finite number (a change from
    0, say) is null, never the NaN / Infinity tokens Python's json writes by default."""
    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(item) for item in value]
        return value

    return json.dumps(finite(data), indent=2, allow_nan=False)


def check_plot_path(path: Path) -> None:
    """--plot is checked like --output, and matplotlib's presence too, before the work."""
    from vtwcli.profile import check_output_path

    check_output_path(path, "kl.png", option="--plot")
    _pyplot()


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise VtwError("--plot needs matplotlib: pip install 'vtwcli[plot]'") from None
    return plt


def output_path_for(path: Path, force: bool) -> Path:
    """Never overwrite without --force: an existing file gets a sibling name, said on screen."""
    if force or not os.path.lexists(path):
        return path
    for n in range(1, 1000):
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not os.path.lexists(candidate):
            # soft_wrap: a path must stay one piece to copy
            err_console.print(f"[yellow]{path} exists; writing {candidate} instead (--force overwrites)[/]",
                              soft_wrap=True)
            return candidate
    raise VtwError(f"{path} and its numbered siblings exist; pass --force or choose another --output")


def kl_table(result) -> Table:
    table = Table(title=f"KL({'P_K || P_full' if result.options.direction == 'withdrawn_to_full' else 'P_full || P_K'})"
                  f" per K ({result.options.criterion}, threshold {result.options.threshold:g})")
    for column in ("K", "mean KL", "95% CI", "p90", "max", "chosen by"):
        table.add_column(column, justify="right")
    from vtwcli.selection import percent

    shares = result.selection.get("k_bootstrap", {})
    for entry in result.per_layer:
        chosen = entry["layer"] == result.layer
        style = "bold green" if chosen else ("dim" if entry["kl_mean"] > result.options.threshold else "")
        share = shares.get(str(entry["layer"]))
        table.add_row(f"{entry['layer']}{' <' if chosen else ''}", f"{entry['kl_mean']:.3g}",
                      f"{entry['kl_ci_low']:.3g} .. {entry['kl_ci_high']:.3g}", f"{entry['kl_p90']:.3g}",
                      f"{entry['kl_max']:.3g}", "" if not share else f"{percent(share)} of resamples", style=style)
    return table


def kl_chart(result, width: int = 40) -> Text:
    """Horizontal bars of mean KL on a log scale, the threshold marked with '|'."""
    floor = 1e-6
    values = [max(e["kl_mean"], floor) for e in result.per_layer]
    threshold = max(result.options.threshold, floor)
    top = math.log10(max(values + [threshold * 10]))
    bottom = math.log10(min(values + [threshold / 10]))
    span = max(top - bottom, 1e-9)

    def column(value: float) -> int:
        return round((math.log10(max(value, floor)) - bottom) / span * width)

    mark = column(threshold)
    text = Text(f"mean KL per layer (log scale, 10^{bottom:.1f} .. 10^{top:.1f}; '|' = threshold)\n")
    for entry, value in zip(result.per_layer, values):
        bar = ["#"] * column(value) + [" "] * (width - column(value))
        bar[min(mark, width - 1)] = "|"
        style = "green" if entry["layer"] == result.layer else ("red" if value > result.options.threshold else "")
        text.append(f"K={entry['layer']:>3} ")
        text.append("".join(bar), style=style)
        text.append(f" {entry['kl_mean']:.2g}\n")
    return text


def save_plot(result, path: Path) -> Path:
    plt = _pyplot()
    from vtwcli.atomic import atomic_write_bytes

    layers = [e["layer"] for e in result.per_layer]
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=120)
    axis.semilogy(layers, [max(e["kl_mean"], 1e-9) for e in result.per_layer], marker="o", label="mean KL")
    axis.fill_between(layers, [max(e["kl_ci_low"], 1e-9) for e in result.per_layer],
                      [max(e["kl_ci_high"], 1e-9) for e in result.per_layer], alpha=0.2, label="95% CI")
    axis.axhline(result.options.threshold, color="red", linestyle="--", label=f"threshold {result.options.threshold:g}")
    if result.layer is not None:
        axis.axvline(result.layer, color="green", linestyle=":", label=f"K = {result.layer}")
    axis.set_xlabel("withdrawal layer K")
    axis.set_ylabel("KL")
    axis.legend(fontsize=8)
    figure.tight_layout()
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue(), option="--plot")
