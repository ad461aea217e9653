"""`vtw profile`: FLOPs, latency and memory with and without withdrawal, into a YAML profile."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from vtwcli.cli import app
from vtwcli.cli._state import console, err_console
from vtwcli.errors import VtwError
from vtwcli.defaults import DEFAULT_TEXT_TOKENS

MEASURED_SECTIONS = ("withdrawal", "flops", "latency", "memory")


def _layer_from_profile(data: dict, source: Path) -> int:
    calibration = data.get("calibration")
    if calibration is None:
        raise VtwError(f"--profile {source} has no calibration section (no calibration.layer); run `vtw calibrate` "
                       "first or pass --layer K")
    layer = calibration.get("layer")
    if layer is None:
        raise VtwError(f"--profile {source}: calibration.layer is null (no layer met the KL threshold); re-calibrate "
                       "with a higher --threshold or pass --layer K")
    return int(layer)


def _model_from_profile(data: dict) -> Optional[str]:
    name = data.get("model", {}).get("name_or_path")
    return None if name in (None, "bundled") else name


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
    for key in ("vision_tower", "projector", "language_model", "lm_head", "total"):
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
    for key, speed in (("prefill_ms", "prefill"), ("decode_ms_per_token", "decode_per_token"),
                       ("end_to_end_ms", "end_to_end")):
        cells = []
        for variant in ("baseline", "withdrawn"):
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
    table.add_row("KV cache reduction", "", f"{memory['kv_cache_reduction']:.1%}", style="bold")
    return table


@app.command("profile")
def profile_command(
    model: Optional[str] = typer.Option(None, "--model", help="Hub id or local directory (with --flops-only a directory "
                                        "holding just config.json is enough). Default: the --profile's model, else the "
                                        "bundled demo model."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Withdrawal layer K (1..L). Default: --profile's "
                                        "calibration.layer."),
    profile: Optional[Path] = typer.Option(None, "--profile", help="Calibration profile: K = calibration.layer, and "
                                           "the measurements extend this profile's data."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Profile to write (YAML). Default with --profile: "
                                          "<stem>.profile.yaml beside it (in place with --force); without --profile "
                                          "nothing is written."),
    force: bool = typer.Option(False, "--force", help="Overwrite the output (with --profile and no --output: the "
                               "profile itself)."),
    flops_only: bool = typer.Option(False, "--flops-only", help="Only FLOPs, from the config on the meta device: no "
                                    "weights, no processor, any model size, seconds."),
    text_tokens: int = typer.Option(DEFAULT_TEXT_TOKENS, "--text-tokens", help="Text tokens of the synthetic prompt."),
    image_tokens: Optional[int] = typer.Option(None, "--image-tokens", help="LLaVA-1.5 layout: vision tokens (a "
                                               "multiple of one image's count, 576 for LLaVA-1.5). Default: --images."),
    images: int = typer.Option(1, "--images", help="Images in the synthetic prompt."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="WxH (or N for NxN) of the synthetic images, "
                                             "for families that size their vision tokens from the image (LLaVA-NeXT, "
                                             "Qwen2-VL, ...). Default: the vision config's image size, else 448."),
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
    withdraw: Optional[str] = typer.Option(None, "--withdraw", help="Which vision tokens to withdraw: image, video or "
                                           "image,video. Default: --profile's calibration.withdraw, else every vision "
                                           "token."),
    videos: int = typer.Option(0, "--videos", help="Videos in the synthetic prompt (families with video; the "
                               "video processor needs torchvision)."),
    as_json: bool = typer.Option(False, "--json", help="Print the measured sections as JSON instead of tables."),
    generic: bool = typer.Option(False, "--generic", help="For an architecture without an adapter entry: derive one "
                                 "from the standard layout and run `vtw verify` on 2 bundled photos first (needs "
                                 "the weights; refused unless exact)."),
) -> None:
    """Measure FLOPs, latency and memory with and without withdrawal at layer K; write them into a profile."""
    from vtwcli.loading import ATTENTION, architecture_of, load_config, load_model, model_section
    from vtwcli.profile import new_profile, read_profile_dict, write_profile
    from vtwcli.adapters import parse_kinds
    from vtwcli.profiling import flops_only_model_section, run_flops_only, run_profile

    if attn not in ATTENTION:
        raise VtwError(f"--attn {attn!r} is not supported; use {' or '.join(ATTENTION)}")
    base: Optional[dict] = None
    if profile is not None:
        base = read_profile_dict(profile)
        calibrated = _layer_from_profile(base, profile)
        if layer is not None and layer != calibrated:
            raise VtwError(f"--layer {layer} contradicts --profile {profile} (calibration.layer = {calibrated}); pass "
                           "one of them")
        layer = calibrated
        if model is None:
            model = _model_from_profile(base)
    if layer is None:
        raise VtwError("no withdrawal layer: pass --layer K or --profile CALIBRATION.yaml (K = calibration.layer)")
    kinds = parse_kinds(withdraw)
    calibrated_kinds = (base or {}).get("calibration", {}).get("withdraw")
    if calibrated_kinds is not None:
        if kinds is not None and tuple(kinds) != tuple(calibrated_kinds):
            raise VtwError(f"--withdraw {','.join(kinds)} contradicts --profile {profile} (calibration.withdraw = "
                           f"{','.join(calibrated_kinds)}); pass one of them")
        kinds = tuple(calibrated_kinds)
    size = _parse_image_size(image_size) if image_size is not None else None
    if generic and flops_only:
        raise VtwError("--generic verifies the derived adapter on the model's weights first; drop --flops-only")
    if fvcore and flops_only:
        raise VtwError("--fvcore traces the real model and needs weights; drop --flops-only (or --fvcore)")
    target = output
    if target is None and profile is not None:
        target = profile if force else profile.with_name(f"{profile.stem}.profile.yaml")
    if target is not None:
        from vtwcli.cli._render import check_output_path

        check_output_path(target, "vtw-profile.yaml")

    if flops_only:
        from vtwcli.loading import bundled_model_path
        from vtwcli.measure.flops import meta_model

        name = str(bundled_model_path()) if model is None else model
        config = load_config(name)
        architecture_of(config)
        meta = meta_model(config, attn=attn)
        if size is not None or videos:
            raise VtwError(f"{'--image-size' if size is not None else '--videos'} needs the model's processor; drop "
                           "--flops-only")
        sections = run_flops_only(config, layer=layer, text_tokens=text_tokens, image_tokens=image_tokens,
                                  images=images, attn=attn, model=meta, kinds=kinds)
        section_model = flops_only_model_section("bundled" if model is None else model, meta, attn=attn,
                                                 dtype=None if dtype == "auto" else dtype)
        device_for_env = "cpu"
    else:
        loaded = load_model(model, device=device, dtype=dtype, attn=attn, generic=generic)
        if threads is not None and threads < 1:
            raise VtwError(f"--threads {threads}: use 1 or more")
        verification = None
        if generic:
            from vtwcli.generic import adopt_with_section, verification_samples

            verification = adopt_with_section(loaded.model, loaded.processor, *verification_samples())
        with console.status(f"profiling at K={layer} ...", spinner="dots") if not as_json else _nothing():
            sections = run_profile(loaded, layer=layer, text_tokens=text_tokens, image_tokens=image_tokens,
                                   images=images, videos=videos, image_size=size, kinds=kinds, new_tokens=new_tokens,
                                   warmup=warmup, min_runs=min_runs, min_time_s=min_time, threads=threads,
                                   fvcore=fvcore, seed=seed)
        section_model = model_section(loaded)
        device_for_env = loaded.device
        if verification is not None:
            sections["verification"] = verification

    if base is not None:
        if base["model"].get("config_sha256") != section_model["config_sha256"]:
            raise VtwError(f"--profile {profile} was calibrated for another model ({base['model'].get('name_or_path')}, "
                           f"config_sha256 {str(base['model'].get('config_sha256'))[:12]}...) than --model "
                           f"{section_model['name_or_path']} ({section_model['config_sha256'][:12]}...); profile the "
                           "calibrated model")
        data = copy.deepcopy(base)
        header = new_profile(data["model"], device_for_env)
        data.update(created_at=header["created_at"], tool=header["tool"], environment=header["environment"])
        for key in MEASURED_SECTIONS:
            data.pop(key, None)  # stale figures of an earlier run (maybe another K) never survive
    else:
        data = new_profile(section_model, device_for_env)
    data.update(sections)
    # torch.__version__ is a str subclass that YAML's safe dumper refuses: plain strings only
    data["environment"] = {k: str(v) if isinstance(v, str) else v for k, v in data["environment"].items()}

    written = write_profile(data, target, force=force or (profile is not None and target == profile)) \
        if target is not None else None

    if as_json:
        typer.echo(json.dumps({**sections, "output": str(written) if written else None}, indent=2))
        return
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
    tokens = sections["flops"]["tokens"]
    media = f"{tokens.get('images', 1)} image(s)" + (f", {tokens['videos']} video(s)" if tokens.get("videos") else "")
    if kinds is None:
        console.print(f"K = {layer}; synthetic prompt: {tokens['vision']} vision tokens ({media}) + "
                      f"{tokens['text']} text tokens (--text-tokens), batch 1")
    else:  # tokens of a kind that stays count as kept, with the text
        console.print(f"K = {layer}; synthetic prompt ({media}): {tokens['vision']} {' and '.join(kinds)} tokens "
                      f"withdrawn, {tokens['text']} tokens kept (text and the other vision kinds), batch 1")
    analytic = sections["flops"].get("analytic")
    if analytic is not None:
        console.print(f"closed form ({', '.join(analytic['covers'])}): baseline {analytic['baseline']['total']:,}, "
                      f"withdrawn {analytic['withdrawn']['total']:,} FLOPs", style="dim", highlight=False)
    if written is not None:
        note = " (beside --profile; --force writes in place)" if output is None and profile is not None \
            and written != profile else ""
        # soft_wrap: a path must stay one piece to copy
        console.print(f"profile written to [bold]{written}[/]{note}", soft_wrap=True)
    else:
        console.print("nothing written (pass --output to keep a profile)", style="dim")


def _parse_image_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise VtwError(f"--image-size {text!r}: use WxH (e.g. 448x448) or N for NxN, positive integers")
    return (values[0], values[-1])


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None
