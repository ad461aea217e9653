"""`vtw profile`: FLOPs, latency and memory with and without withdrawal, into a YAML profile."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from vtwcli.cli import app
from vtwcli.cli._render import json_text
from vtwcli.cli._tables import print_table
from vtwcli.cli._state import console, err_console
from vtwcli.errors import VtwError
from vtwcli.defaults import (DEFAULT_CI_TARGET, DEFAULT_MAX_TIME_S, DEFAULT_MIN_PAIRS, DEFAULT_TEXT_TOKENS,
                             DEFAULT_VIDEO_FRAMES, MAX_VIDEO_FRAMES)
from vtwcli.profile.model import FLOPS_COMPONENTS, LATENCY_FIGURES, VARIANTS

MAX_IMAGE_SIDE = 8192  # --image-size: the synthetic images are held in memory

_UNITS = ((1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "kFLOPs"), (1, "FLOPs"))


def _unit(value: float) -> tuple[float, str]:
    return next(((scale, name) for scale, name in _UNITS if value >= scale), (1, "FLOPs"))


def _scaled(value: float, scale: float) -> str:
    return f"{value / scale:,.3f}"


def _flops_table(flops: dict, kinds: Optional[tuple] = None) -> Table:
    scale, unit = _unit(flops["baseline"]["total"])
    tokens = flops["tokens"]
    prompt = (f"{tokens['vision']} vision + {tokens['text']} text tokens" if kinds is None else
              f"{tokens['vision']} withdrawn ({' and '.join(kinds)}) + {tokens['text']} kept tokens")
    table = Table(title=f"FLOPs ({unit}; {prompt}, prefill, batch 1)")
    for column in ("component", "baseline", "withdrawn", "reduction"):
        table.add_column(column, justify="right" if column != "component" else "left")
    for key in (*FLOPS_COMPONENTS, "total"):
        base, new = flops["baseline"][key], flops["withdrawn"][key]
        reduction = f"{1 - new / base:.1%}" if base else "-"
        table.add_row(key, _scaled(base, scale), _scaled(new, scale), reduction, style="bold" if key == "total" else "")
    decode = flops.get("decode_per_token")
    if decode:  # in its own unit: a 7B decode step is GFLOPs beside TFLOPs of prefill
        base, new = decode["baseline"], decode["withdrawn"]
        decode_scale, decode_unit = _unit(base)
        table.add_row(f"decode / token ({decode_unit})", _scaled(base, decode_scale), _scaled(new, decode_scale),
                      f"{1 - new / base:.1%}" if base else "-", style="dim")
        table.caption = (f"decode: context {decode['context_tokens']['baseline']} -> "
                         f"{decode['context_tokens']['withdrawn']} tokens in layers >= K")
    return table


def _latency_table(latency: dict) -> Table:
    pairs = f"{latency['pairs']} pairs" if latency.get("pairs") else "runs"
    table = Table(pad_edge=False, title=f"Latency (ms, median (p10..p90) of {pairs}; {latency['device_name']}, "
                  f"{latency['threads']} threads, {latency['new_tokens']} new tokens)")
    interval = latency.get("speedup_interval")
    for column in ("", "baseline", "withdrawn", "speedup (95% CI)" if interval else "speedup"):
        table.add_column(column, justify="right" if column else "left")
    for label, key, speed in LATENCY_FIGURES:
        cells = []
        for variant in VARIANTS:
            stats = latency[variant][key]
            cells.append(f"{_ms(stats['median'])} ({_ms(stats['p10'])}..{_ms(stats['p90'])})")
        value = latency["speedup"][speed]
        cell = f"{value:.2f}x" if value else "-"
        bounds = (interval or {}).get(speed) or {}
        if bounds.get("low") is not None:
            cell += f" ({bounds['low']:.2f}..{bounds['high']:.2f})"
        table.add_row(label, *cells, cell)
    if latency.get("flops_ratio"):
        table.add_row("FLOPs ratio", "", "", f"{latency['flops_ratio']:.2f}x (prefill)", style="dim")
    return table


def _ms(value: float) -> str:
    """3 significant digits (whole milliseconds from 1000 up): the table must fit 80 columns in a log."""
    return f"{value:.0f}" if value >= 1000 else f"{value:.3g}"


def _noise_lines(latency: dict) -> list[tuple[str, str]]:
    """(text, style) lines under the latency table: the conditions, and plainly whether to trust it."""
    noise = latency.get("noise")
    if not noise:
        return []
    load = "" if noise.get("load_start") is None else \
        f"; load average {noise['load_start']:.2f} -> {noise['load_end']:.2f} on {noise['cpus']} CPUs"
    lines = [(f"timed {noise['seconds']:.1f} s of at most {noise['max_time_s']:g} s, interval target "
              f"+-{noise['ci_target']:.1%}{load}", "dim")]
    lines += [(f"note: {note}", "yellow") for note in latency.get("notes") or ()]
    if noise["noisy"]:
        lines.append(("latency figures are too noisy to use:", "bold yellow"))
        lines += [(f"  - {reason}", "yellow") for reason in noise["reasons"]]
        lines.append(("  rerun on a quieter machine, with --max-time higher, or with --threads 1", "yellow"))
    return lines


def _memory_table(memory: dict) -> Table:
    table = Table(title="Memory (MiB)")
    for column in ("", "baseline", "withdrawn"):
        table.add_column(column, justify="right" if column else "left")

    def mib(value):
        return "-" if value is None else f"{value / 2 ** 20:,.2f}"

    for key, label in (("kv_cache_bytes", "KV cache after prefill"), ("peak_rss_bytes", "peak RSS (process)"),
                       ("cuda_peak_allocated_bytes", "CUDA peak allocated"),
                       ("cuda_peak_reserved_bytes", "CUDA peak reserved")):
        if key.startswith("cuda") and memory["baseline"].get(key) is None:
            continue
        table.add_row(label, mib(memory["baseline"].get(key)), mib(memory["withdrawn"].get(key)))
    if memory["baseline"].get("state_bytes") is not None:
        table.add_row("conv / recurrent state (fixed size)", mib(memory["baseline"]["state_bytes"]),
                      mib(memory["withdrawn"]["state_bytes"]))
    table.add_row("KV cache reduction", "", f"{memory['kv_cache_reduction']:.1%}", style="bold")
    return table


# Options whose help runs over several lines, kept out of the signature.
_MODEL = typer.Option(None, "--model", help="Hub id or local directory (with --flops-only a directory "
                      "holding just config.json is enough). Default: the --profile's model, else the "
                      "bundled demo model.")
_OUTPUT = typer.Option(None, "--output", "-o", help="Profile to write (YAML). Default with --profile: "
                       "<stem>.profile.yaml beside it (in place with --force); without --profile "
                       "nothing is written.")
_FLOPS_ONLY = typer.Option(False, "--flops-only", help="Only FLOPs, from the config on the meta device: no "
                           "weights, no processor, any model size, seconds (families that size vision "
                           "tokens from the image also read preprocessor_config.json; with --videos, "
                           "the video processor's config).")
_IMAGE_SIZE = typer.Option(None, "--image-size", help="WxH (or N for NxN) of the synthetic images, "
                           "for families that size their vision tokens from the image (LLaVA-NeXT, "
                           "Qwen2-VL, ...). Default: the vision config's image size, else 448.")
_WITHDRAW = typer.Option(None, "--withdraw", help="Which vision tokens to withdraw: image, video or "
                         "image,video. Default: --profile's calibration.withdraw, else every vision "
                         "token.")
_FRAMES = typer.Option(None, "--frames", help="Frames of each synthetic video, as the model sees them "
                       f"(the processor's frame sampling is off; 1..{MAX_VIDEO_FRAMES}). Default: "
                       f"{DEFAULT_VIDEO_FRAMES}; only with --videos.")
_GENERIC = typer.Option(False, "--generic", help="For an architecture without an adapter entry: derive one "
                        "from the standard layout and run `vtw verify` on 2 bundled photos first (needs "
                        "the weights; refused unless exact).")


@app.command("profile")
def profile_command(
    model: Optional[str] = _MODEL,
    layer: Optional[int] = typer.Option(None, "--layer", help="Withdrawal layer K (1..L). Default: --profile's "
                                        "calibration.layer."),
    profile: Optional[Path] = typer.Option(None, "--profile", help="Calibration profile: K = calibration.layer, and "
                                           "the measurements extend this profile's data."),
    output: Optional[Path] = _OUTPUT,
    force: bool = typer.Option(False, "--force", help="Overwrite the output (with --profile and no --output: the "
                               "profile itself)."),
    flops_only: bool = _FLOPS_ONLY,
    text_tokens: int = typer.Option(DEFAULT_TEXT_TOKENS, "--text-tokens", help="Text tokens of the synthetic prompt."),
    image_tokens: Optional[int] = typer.Option(None, "--image-tokens", help="LLaVA-1.5 layout: vision tokens (a "
                                               "multiple of one image's count, 576 for LLaVA-1.5). Default: --images."),
    images: int = typer.Option(1, "--images", help="Images in the synthetic prompt."),
    image_size: Optional[str] = _IMAGE_SIZE,
    new_tokens: int = typer.Option(8, "--new-tokens", help="Tokens generated per latency run (min = max)."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed pairs of runs first."),
    min_runs: int = typer.Option(DEFAULT_MIN_PAIRS, "--min-runs", help="Timed pairs (baseline + withdrawn), at "
                                 f"least ({DEFAULT_MIN_PAIRS} give a 95% interval)."),
    min_time: float = typer.Option(2.0, "--min-time", help="Seconds of timed pairs, at least."),
    max_time: float = typer.Option(DEFAULT_MAX_TIME_S, "--max-time", help="Time budget in seconds: pairs repeat until every "
                                   "speedup's 95% interval meets --ci-target or this is spent."),
    ci_target: float = typer.Option(DEFAULT_CI_TARGET, "--ci-target", help="Stop once each speedup's 95% interval is within "
                                    "this share of its median (0.03 = +-3%); wider at the end is flagged noisy."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads while measuring (recorded). "
                                          "Default: half the CPU cores, at least 1."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16."),
    attn: str = typer.Option("sdpa", "--attn", help="Attention implementation: sdpa or eager."),
    fvcore: bool = typer.Option(False, "--fvcore", help="Cross-check the prefill FLOPs with fvcore (jit trace; needs "
                                "weights, so not with --flops-only)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic prompt and image."),
    withdraw: Optional[str] = _WITHDRAW,
    videos: int = typer.Option(0, "--videos", help="Videos in the synthetic prompt (families with video; the "
                               "video processor needs torchvision)."),
    frames: Optional[int] = _FRAMES,
    as_json: bool = typer.Option(False, "--json", help="Print the measured sections as JSON instead of tables."),
    generic: bool = _GENERIC,
) -> None:
    """Measure FLOPs, latency and memory with and without withdrawal at layer K; write them into a profile."""
    from vtwcli.adapters import parse_kinds
    from vtwcli.measure.latency import LatencyPlan
    from vtwcli.profiling import ProfileOptions, profile_model

    options = ProfileOptions(
        model=model, layer=layer, profile=profile, output=output, force=force, flops_only=flops_only,
        text_tokens=text_tokens, image_tokens=image_tokens, images=images, videos=videos, frames=frames,
        image_size=None if image_size is None else _parse_image_size(image_size), new_tokens=new_tokens,
        latency=LatencyPlan(warmup=warmup, min_runs=min_runs, min_time_s=min_time, max_time_s=max_time,
                            ci_target=ci_target), threads=threads, device=device, dtype=dtype,
        attn=attn, fvcore=fvcore, seed=seed, kinds=parse_kinds(withdraw), generic=generic)
    run = profile_model(options, busy=_busy(as_json), progress=None if as_json else _pair_progress())
    if as_json:
        typer.echo(json_text({**run.sections, "output": str(run.written) if run.written else None}))
    else:
        _render_run(run)


def _render_run(run) -> None:
    sections, kinds, layer = run.sections, run.options.kinds, run.options.layer
    print_table(_flops_table(sections["flops"], kinds))
    console.print(f"counter: {sections['flops']['counter']}", soft_wrap=True)
    if "fvcore" in sections["flops"]:
        fv = sections["flops"]["fvcore"]
        console.print(f"fvcore cross-check: baseline {fv['baseline_total']:,}, withdrawn {fv['withdrawn_total']:,} "
                      f"FLOPs ({fv['note']})", style="dim", highlight=False, soft_wrap=True)
    if "latency" in sections:
        print_table(_latency_table(sections["latency"]))
        for text, style in _noise_lines(sections["latency"]):
            console.print(text, style=style, highlight=False, soft_wrap=True)  # a log wraps it, not us
    if "memory" in sections:
        print_table(_memory_table(sections["memory"]))
        from vtwcli.measure.memory import peak_rss_per_variant

        if not peak_rss_per_variant():
            err_console.print("[yellow]peak RSS could not be reset between variants on this OS: both figures are the "
                              "process's peak so far and are not comparable[/]")
    console.print(_prompt_line(sections["flops"]["tokens"], layer, kinds), soft_wrap=True)
    analytic = sections["flops"].get("analytic")
    if analytic is not None:
        console.print(f"closed form ({', '.join(analytic['covers'])}): baseline {analytic['baseline']['total']:,}, "
                      f"withdrawn {analytic['withdrawn']['total']:,} FLOPs", style="dim", highlight=False, soft_wrap=True)
    _render_written(run)


def _prompt_line(tokens: dict, layer: int, kinds: Optional[tuple]) -> str:
    media = _count(tokens.get("images", 1), "image") + (
        f", {_count(tokens['videos'], 'video')} of {_count(tokens.get('frames', 0), 'frame')}"
        if tokens.get("videos") else "")
    if kinds is None:
        return (f"K = {layer}; synthetic prompt: {tokens['vision']} vision tokens ({media}) + "
                f"{tokens['text']} text tokens (--text-tokens), batch 1")
    # tokens of a kind that stays count as kept, with the text
    return (f"K = {layer}; synthetic prompt ({media}): {tokens['vision']} {' and '.join(kinds)} tokens "
            f"withdrawn, {tokens['text']} tokens kept (text and the other vision kinds), batch 1")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _render_written(run) -> None:
    written, options = run.written, run.options
    if written is None:
        console.print("nothing written (pass --output to keep a profile)", style="dim")
        return
    note = " (beside --profile; --force writes in place)" if options.output is None and options.profile is not None \
        and written != options.profile else ""
    # soft_wrap: a path must stay one piece to copy
    console.print(f"profile written to [bold]{written}[/]{note}", soft_wrap=True)


def _parse_image_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise VtwError(f"--image-size {text!r}: use WxH (e.g. 448x448) or N for NxN, positive integers")
    if max(values) > MAX_IMAGE_SIDE:
        raise VtwError(f"--image-size {text!r}: a side of at most {MAX_IMAGE_SIDE} pixels (the synthetic image is "
                       "held in memory)")
    return (values[0], values[-1])


def _busy(hidden: bool):
    """A spinner on a terminal; nothing in a log (the pairs' progress lines say what happens there)."""
    if hidden or not err_console.is_terminal:
        return lambda text: _nothing()
    return lambda text: err_console.status(text, spinner="dots")


def _pair_progress():
    """In a log (stderr not a terminal): a line every few seconds about the latency pairs."""
    if err_console.is_terminal:
        return None
    from vtwcli.cli._progress import PlainProgress, duration

    lines = PlainProgress("profile: latency pairs", None, write=lambda text: err_console.print(text, highlight=False,
                                                                                               soft_wrap=True))

    def heard(state: dict) -> None:
        width = state["half_width"]
        widest = "no interval yet" if width == float("inf") else f"widest 95% interval +-{width:.1%}"
        lines.advance(1, f" ({widest}, target +-{state['ci_target']:.1%}; at most "
                         f"{duration(max(0.0, state['max_time_s'] - state['seconds']))} left)")
    return heard


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None
