"""`vtw profile`: FLOPs, latency and memory with and without withdrawal, into a YAML profile."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from vtwcli.cli import app
from vtwcli.cli._render import json_text
from vtwcli.cli._state import console, err_console
from vtwcli.errors import VtwError
from vtwcli.defaults import DEFAULT_TEXT_TOKENS
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
    if decode:
        base, new = decode["baseline"], decode["withdrawn"]
        table.add_row(f"decode / token (context {decode['context_tokens']['baseline']} -> "
                      f"{decode['context_tokens']['withdrawn']} in layers >= K)", _scaled(base, scale),
                      _scaled(new, scale),
                      f"{1 - new / base:.1%}" if base else "-", style="dim")
    return table


def _latency_table(latency: dict) -> Table:
    table = Table(title=f"Latency (ms, median \\[p10..p90] of runs; {latency['device_name']}, {latency['threads']} threads, "
                  f"{latency['new_tokens']} new tokens)")
    for column in ("", "baseline", "withdrawn", "speedup"):
        table.add_column(column, justify="right" if column else "left")
    for _, key, speed in LATENCY_FIGURES:
        cells = []
        for variant in VARIANTS:
            stats = latency[variant][key]
            cells.append(f"{stats['median']:.2f} \\[{stats['p10']:.2f}..{stats['p90']:.2f}] n={stats['runs']}")
        value = latency["speedup"][speed]
        table.add_row(key.removesuffix("_ms"), *cells, f"{value:.2f}x" if value else "-")
    if latency.get("flops_ratio"):
        table.add_row("FLOPs ratio (prefill)", "", "", f"{latency['flops_ratio']:.2f}x", style="dim")
    return table


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
                           "tokens from the image also read preprocessor_config.json).")
_IMAGE_SIZE = typer.Option(None, "--image-size", help="WxH (or N for NxN) of the synthetic images, "
                           "for families that size their vision tokens from the image (LLaVA-NeXT, "
                           "Qwen2-VL, ...). Default: the vision config's image size, else 448.")
_WITHDRAW = typer.Option(None, "--withdraw", help="Which vision tokens to withdraw: image, video or "
                         "image,video. Default: --profile's calibration.withdraw, else every vision "
                         "token.")
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
    warmup: int = typer.Option(1, "--warmup", help="Untimed runs of each variant first."),
    min_runs: int = typer.Option(5, "--min-runs", help="Timed runs of each variant, at least."),
    min_time: float = typer.Option(2.0, "--min-time", help="Seconds of timed runs, at least (both variants together)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch.set_num_threads for the timing (recorded)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16."),
    attn: str = typer.Option("sdpa", "--attn", help="Attention implementation: sdpa or eager."),
    fvcore: bool = typer.Option(False, "--fvcore", help="Cross-check the prefill FLOPs with fvcore (jit trace; needs "
                                "weights, so not with --flops-only)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic prompt and image."),
    withdraw: Optional[str] = _WITHDRAW,
    videos: int = typer.Option(0, "--videos", help="Videos in the synthetic prompt (families with video; the "
                               "video processor needs torchvision)."),
    as_json: bool = typer.Option(False, "--json", help="Print the measured sections as JSON instead of tables."),
    generic: bool = _GENERIC,
) -> None:
    """Measure FLOPs, latency and memory with and without withdrawal at layer K; write them into a profile."""
    from vtwcli.adapters import parse_kinds
    from vtwcli.profiling import ProfileOptions, profile_model

    options = ProfileOptions(
        model=model, layer=layer, profile=profile, output=output, force=force, flops_only=flops_only,
        text_tokens=text_tokens, image_tokens=image_tokens, images=images, videos=videos,
        image_size=None if image_size is None else _parse_image_size(image_size), new_tokens=new_tokens,
        warmup=warmup, min_runs=min_runs, min_time_s=min_time, threads=threads, device=device, dtype=dtype,
        attn=attn, fvcore=fvcore, seed=seed, kinds=parse_kinds(withdraw), generic=generic)
    run = profile_model(options, busy=(lambda text: _nothing()) if as_json else
                        (lambda text: console.status(text, spinner="dots")))
    if as_json:
        typer.echo(json_text({**run.sections, "output": str(run.written) if run.written else None}))
    else:
        _render_run(run)


def _render_run(run) -> None:
    sections, kinds, layer = run.sections, run.options.kinds, run.options.layer
    console.print(_flops_table(sections["flops"], kinds))
    console.print(f"counter: {sections['flops']['counter']}")
    if "fvcore" in sections["flops"]:
        fv = sections["flops"]["fvcore"]
        console.print(f"fvcore cross-check: baseline {fv['baseline_total']:,}, withdrawn {fv['withdrawn_total']:,} "
                      f"FLOPs ({fv['note']})", style="dim", highlight=False)
    if "latency" in sections:
        console.print(_latency_table(sections["latency"]))
    if "memory" in sections:
        console.print(_memory_table(sections["memory"]))
        from vtwcli.measure.memory import peak_rss_per_variant

        if not peak_rss_per_variant():
            err_console.print("[yellow]peak RSS could not be reset between variants on this OS: both figures are the "
                              "process's peak so far and are not comparable[/]")
    console.print(_prompt_line(sections["flops"]["tokens"], layer, kinds))
    analytic = sections["flops"].get("analytic")
    if analytic is not None:
        console.print(f"closed form ({', '.join(analytic['covers'])}): baseline {analytic['baseline']['total']:,}, "
                      f"withdrawn {analytic['withdrawn']['total']:,} FLOPs", style="dim", highlight=False)
    _render_written(run)


def _prompt_line(tokens: dict, layer: int, kinds: Optional[tuple]) -> str:
    media = f"{tokens.get('images', 1)} image(s)" + (f", {tokens['videos']} video(s)" if tokens.get("videos") else "")
    if kinds is None:
        return (f"K = {layer}; synthetic prompt: {tokens['vision']} vision tokens ({media}) + "
                f"{tokens['text']} text tokens (--text-tokens), batch 1")
    # tokens of a kind that stays count as kept, with the text
    return (f"K = {layer}; synthetic prompt ({media}): {tokens['vision']} {' and '.join(kinds)} tokens "
            f"withdrawn, {tokens['text']} tokens kept (text and the other vision kinds), batch 1")


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


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None
