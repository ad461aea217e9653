"""`vtw profile` orchestration: FLOPs, latency and memory with and without withdrawal, as profile sections.

* :func:`run_profile` measures a loaded model (weights on a real device): counted FLOPs through the real
  withdrawal hooks (+ the analytic count, + fvcore if asked), latency (alternating runs), memory.
* :func:`run_flops_only` needs nothing but a config: the model is built on the meta device, so the
  FLOPs of any size (7B, 13B, 72B) are counted on a laptop in seconds.

Both return ``{"withdrawal": ..., "flops": ..., ["latency": ..., "memory": ...]}`` shaped as
docs/profile-schema.md says, plus :func:`flops_only_model_section` / :func:`vtwcli.loading.model_section`
for the profile's ``model`` block. No file I/O here (the CLI writes the YAML).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from vtwcli.errors import UnsupportedError, VtwError
from vtwcli.loading import LoadedModel, model_block
from vtwcli.measure.flops import (COUNTER, COUNTER_META, PromptCounts, PromptLayout, analytic_flops, count_flops,
                                  count_flops_meta, flops_convention, flops_section, fvcore_flops, meta_model,
                                  require_fixed_image_layout)
from vtwcli.defaults import DEFAULT_TEXT_TOKENS, DEFAULT_VIDEO_FRAMES
from vtwcli.measure.latency import LatencyPlan, measure_latency
from vtwcli.measure.memory import measure_memory
from vtwcli.withdrawal import check_layer, num_decoder_layers, refuse_kept_blocks, withdraw

__all__ = ["DEFAULT_TEXT_TOKENS", "ProfileOptions", "ProfileRun", "profile_model", "resolve_from_base",
           "run_profile", "run_flops_only", "flops_only_model_section", "check_layer",
           "prompt_inputs", "processor_prompt", "native_image_size"]


def _analytic_or_none(config, prompt, layer: int, *, vision: bool = True) -> dict | None:
    try:
        return analytic_flops(config, prompt, layer, vision=vision)
    except UnsupportedError:
        return None  # an architecture the closed form does not know: the counted figures stand alone


def checkpoint_dtype(config) -> str:
    """The dtype config.json records: top-level (Qwen2.5-VL) or in the text model's config (Qwen3-VL). Read it
    before a model is built from ``config``: building resets the sub-configs' dtype."""
    return str(getattr(config, "dtype", None) or getattr(config.get_text_config(), "dtype", None) or "float32")


def flops_only_model_section(name_or_path: str, model, *, attn: str, dtype: str | None = None) -> dict:
    """The profile's ``model`` block for a config-only (meta device) model."""
    dtype = checkpoint_dtype(model.config) if dtype is None else dtype
    return model_block(name_or_path, model, dtype=dtype, device="meta", attn=attn)


def _layout_image_tokens(config, images: int, image_tokens: int | None) -> int | None:
    """--images N on the fixed LLaVA-1.5 layout: N times one image's tokens (or --image-tokens, not both)."""
    from vtwcli.measure.flops import tokens_per_image

    if images < 1:
        raise VtwError(f"--images {images}: the prompt needs at least 1 image")
    if image_tokens is not None and images != 1:
        raise VtwError("--images and --image-tokens both set the number of images; pass one of them")
    return image_tokens if image_tokens is not None else images * tokens_per_image(config)


def run_flops_only(config, *, layer: int, text_tokens: int = DEFAULT_TEXT_TOKENS, image_tokens: int | None = None,
                   images: int = 1, attn: str = "sdpa", model=None, kinds: tuple[str, ...] | None = None,
                   image_size: tuple[int, int] | None = None, source: str | None = None, videos: int = 0,
                   frames: int | None = None) -> dict:
    """``withdrawal`` and ``flops`` sections from a config alone (meta device, no weights, no processor).

    A family whose tokens depend on the image (an adapter with an ``image_tokens`` rule) also reads the image
    processor's configuration (preprocessor_config.json) from ``source``: see :func:`run_flops_only_sized`."""
    from vtwcli.adapters import adapter_for
    from vtwcli.measure.config_video import check_videos
    from vtwcli.validate import check_frames

    model = meta_model(config, attn=attn) if model is None else model
    adapter = adapter_for(model)
    check_frames(frames, videos)  # resolved by run_flops_only_sized
    check_videos(adapter, model.config, videos, images=images, config_only=True)
    if not adapter.fixed_image_layout and adapter.image_tokens is not None:
        if image_tokens is not None:
            raise _image_tokens_refused(adapter)
        return run_flops_only_sized(model, source, layer=layer, text_tokens=text_tokens, images=images,
                                    image_size=image_size, kinds=kinds, videos=videos, frames=frames)
    adapter = require_fixed_image_layout(model)  # before the layout below, which needs it
    if image_size is not None:
        raise _image_size_refused(adapter)
    check_layer(layer, num_decoder_layers(model), option="--layer")
    adapter.check_kinds(model.config, kinds)
    image_tokens = _layout_image_tokens(model.config, images, image_tokens)
    layout = PromptLayout.for_config(model.config, text_tokens=text_tokens, image_tokens=image_tokens)
    adapter.check_prompt_fits(model.config, layout.total)
    counted = count_flops_meta(model, layout, layer)
    analytic = _analytic_or_none(model.config, layout, layer)
    return {"withdrawal": withdrawal_section(layer, kinds),
            "flops": flops_section(counted, layout, analytic=analytic, counter=COUNTER_META,
                                   convention=flops_convention(model.config))}


def run_flops_only_sized(model, source: str | None, *, layer: int, text_tokens: int = DEFAULT_TEXT_TOKENS,
                         images: int = 1, image_size: tuple[int, int] | None = None,
                         kinds: tuple[str, ...] | None = None, videos: int = 0, frames: int | None = None) -> dict:
    """Config-only sections of a family that sizes its vision tokens from each image: ``images`` images and
    ``videos`` videos of ``frames`` frames, all of ``image_size`` (W, H; default: the vision config's size, else
    448), counted on the meta device (vtwcli/measure/config_flops.py), with the closed form of the language
    model and lm_head. The image (video) processor is built from ``source``'s config files only."""
    from vtwcli.adapters import adapter_for
    from vtwcli.measure.config_flops import COUNTER_CONFIG, count_flops_from_config, image_processor_for_flops
    from vtwcli.measure.config_video import COUNTER_CONFIG_VIDEOS, check_videos, video_processor_for_flops
    from vtwcli.validate import check_frames

    adapter = adapter_for(model)
    frames = check_frames(frames, videos)
    check_layer(layer, num_decoder_layers(model), option="--layer")
    adapter.check_kinds(model.config, kinds)
    check_videos(adapter, model.config, videos, images=images, config_only=True)
    _check_withdrawn_media(kinds, images, videos, adapter.video_kind)
    image_processor = image_processor_for_flops(source or "", adapter.family) if images else None
    video_processor = video_processor_for_flops(source or "", adapter.family) if videos else None
    counted, counts = count_flops_from_config(model, image_processor, layer=layer, images=images,
                                              image_size=image_size or native_image_size(model.config),
                                              text_tokens=text_tokens, videos=videos, frames=frames,
                                              video_processor=video_processor, kinds=kinds)
    analytic = _analytic_or_none(model.config, counts, layer, vision=False)
    return {"withdrawal": withdrawal_section(layer, kinds),
            "flops": flops_section(counted, counts, analytic=analytic,
                                   counter=COUNTER_CONFIG_VIDEOS if videos else COUNTER_CONFIG,
                                   convention=flops_convention(model.config))}


def _check_withdrawn_media(kinds: tuple[str, ...] | None, images: int, videos: int, video_kind: str = "video") -> None:
    """A --withdraw selection must name something the synthetic prompt holds (else nothing is withdrawn); the
    videos are of ``video_kind`` (Adapter.video_kind)."""
    held = {"image": images, "video": 0}
    held[video_kind] += videos
    if kinds is not None and not any(held[kind] for kind in kinds):
        missing = " and ".join(f"no {kind} (--{kind}s 0)" for kind in kinds)
        raise VtwError(f"--withdraw {','.join(kinds)}: the synthetic prompt has {missing}, so nothing would be "
                       f"withdrawn; add --{kinds[0]}s N or change --withdraw")


def _image_tokens_refused(adapter) -> VtwError:
    return VtwError(f"--image-tokens: {adapter.family} sizes the image tokens from each image; set them with --images "
                    "N and --image-size WxH instead")


def _image_size_refused(adapter) -> VtwError:
    return VtwError(f"--image-size: {adapter.family} resizes every image to one size with a fixed token count; drop "
                    "--image-size (use --images N for more images)")


def withdrawal_section(layer: int, kinds: tuple[str, ...] | None) -> dict:
    return {"layer": layer} if kinds is None else {"layer": layer, "kinds": list(kinds)}


def prompt_inputs(loaded: LoadedModel, layout: PromptLayout, *, seed: int = 0) -> dict:
    """A deterministic synthetic prompt: random ordinary text tokens around the image tokens, and a
    seeded random image through the model's own image processor (or random pixels of the right shape)."""
    import numpy as np

    config = loaded.model.config
    processor = loaded.processor
    tokenizer = getattr(processor, "tokenizer", None)
    vocab_limit = len(tokenizer) if tokenizer is not None else None
    exclude = tuple(getattr(tokenizer, "all_special_ids", ()) or ())
    input_ids = layout.input_ids(config, seed=seed, vocab_limit=vocab_limit, exclude=exclude)
    image_processor = getattr(processor, "image_processor", None)
    pixels = None
    if image_processor is not None:
        rng = np.random.default_rng(seed)
        size = config.vision_config.image_size
        images = [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(layout.images)]
        try:
            pixels = image_processor(images=images, return_tensors="pt")["pixel_values"]
        except Exception:  # noqa: BLE001 - any processor quirk: fall back to random pixels of the right shape
            pixels = None
        expected = (layout.images, getattr(config.vision_config, "num_channels", 3), size, size)
        if pixels is not None and tuple(pixels.shape) != expected:
            pixels = None
    if pixels is None:
        pixels = layout.pixel_values(config, seed=seed)
    return {"input_ids": input_ids.to(loaded.device),
            "pixel_values": pixels.to(device=loaded.device, dtype=loaded.dtype)}


# Common words, each one token after a space in most tokenizers: the synthetic prompt's filler text.
FILLER_WORDS = ("the", "what", "is", "this", "and", "image", "color", "of", "in", "a", "how", "many", "shape", "there",
                "where", "picture", "show", "left", "right", "red", "blue", "green")
DEFAULT_IMAGE_SIZE = 448  # square side for families whose config names no image size (Qwen2-VL: 256 tokens)


def native_image_size(config) -> tuple[int, int]:
    """(width, height) of the synthetic image: the vision config's image size, else DEFAULT_IMAGE_SIZE."""
    size = getattr(config.vision_config, "image_size", None)
    if isinstance(size, int):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[1]), int(size[0])  # configs give (height, width)
    return DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE


def _filler_words(tokenizer) -> list[str]:
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    words = []
    for word in FILLER_WORDS:
        try:
            ids = tokenizer.encode(" " + word, add_special_tokens=False)
        except Exception:  # noqa: BLE001 - a tokenizer that cannot encode it simply does not offer the word
            continue
        if len(ids) == 1 and ids[0] not in special:
            words.append(word)
    return words or ["the"]


def processor_prompt(loaded: LoadedModel, *, images: int = 1, videos: int = 0,
                     image_size: tuple[int, int] | None = None, text_tokens: int = DEFAULT_TEXT_TOKENS,
                     seed: int = 0, kinds: tuple[str, ...] | None = None,
                     frames: int = DEFAULT_VIDEO_FRAMES) -> tuple[dict, PromptCounts]:
    """A batch-1 prompt built the way users build theirs: the chat template around ``images`` seeded random
    images of ``image_size`` (width, height), ``videos`` random videos of ``frames`` such frames (all of them
    seen: the processor's frame sampling is off), and filler words, through the model's own processor.

    Filler words are added until the prompt holds ``text_tokens`` non-vision tokens (template and
    image-delimiter tokens count as text: withdrawal keeps them). Returns the inputs on the model's device
    and the token counts read off the ids: ``vision_tokens`` are the tokens withdrawal removes (only the
    ``kinds`` selected, e.g. images but not video), ``text_tokens`` everything it keeps.
    """
    import numpy as np
    from PIL import Image

    from vtwcli.adapters import adapter_for
    from vtwcli.measure.config_video import frames_as_given
    from vtwcli.prompts import chat_prompt

    model, processor = loaded.model, loaded.processor
    adapter = adapter_for(model)
    if processor is None:
        raise VtwError(f"{loaded.name_or_path}: profiling this architecture builds its prompt with the model's "
                       "processor, and none could be loaded; save the processor beside the model")
    if images < 0 or videos < 0 or images + videos < 1:
        raise VtwError(f"--images {images} --videos {videos}: the prompt needs at least 1 image or video")
    # each image or video is at least one token: refuse what cannot fit before building it
    adapter.check_prompt_fits(model.config, text_tokens + images + videos, why=" at the very least")
    width, height = image_size or native_image_size(model.config)
    rng = np.random.default_rng(seed)
    pictures = [Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)) for _ in range(images)]
    clips = [rng.integers(0, 256, size=(frames, height, width, 3), dtype=np.uint8) for _ in range(videos)]
    tokenizer = getattr(processor, "tokenizer", processor)
    words = _filler_words(tokenizer)
    order = np.random.default_rng(seed + 1).integers(len(words), size=4 * text_tokens + 64)
    vision_ids = torch.tensor(adapter.vision_token_ids(model.config))

    def build(count: int):
        text = " ".join(words[i] for i in order[:count])
        media = {"images": [pictures]} if pictures else {}
        if clips:
            media.update(videos=clips, **frames_as_given(processor, clips))
        try:
            inputs = processor(text=[chat_prompt(processor, images, text, videos=videos)], return_tensors="pt",
                               **media)
        except (ValueError, TypeError, ImportError) as error:
            raise VtwError(f"{loaded.name_or_path}: the processor rejected the synthetic prompt ({images} image(s), "
                           f"{videos} video(s) of {frames} frame(s), {width}x{height}): {error}") from None
        inputs.pop("labels", None)  # PaliGemma's processor adds training labels; inference takes none
        ids = inputs["input_ids"][0]
        vision = int(torch.isin(ids, vision_ids).sum())
        return dict(inputs), vision, len(ids) - vision

    inputs, vision, text = build(1)
    if text > text_tokens:
        raise VtwError(f"--text-tokens {text_tokens}: the chat template and image delimiters of "
                       f"{loaded.name_or_path} already take {text} text tokens with a one-word question; use "
                       f"--text-tokens {text} or more")
    count = 1
    for _ in range(4):  # a tokenizer may merge or split words: correct by the difference, a few times
        if text == text_tokens:
            break
        count = max(1, count + text_tokens - text)
        inputs, vision, text = build(count)
    if vision == 0:
        raise VtwError(f"{loaded.name_or_path}: the processor produced no vision tokens for the synthetic prompt; "
                       "check the model's chat template renders {\"type\": \"image\"} entries")
    if kinds is not None:  # tokens of a kind that is not withdrawn stay, like text
        selected = torch.tensor(adapter.vision_token_ids(model.config, kinds))
        withdrawn = int(torch.isin(inputs["input_ids"][0], selected).sum())
        vision, text = withdrawn, text + vision - withdrawn
    on_device = {k: (v.to(loaded.device, dtype=loaded.dtype) if v.is_floating_point() else v.to(loaded.device))
                 for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    return on_device, PromptCounts(images=images, vision_tokens=vision, text_tokens=text, videos=videos,
                                   frames=frames if videos else 0)


def run_profile(loaded: LoadedModel, *, layer: int, text_tokens: int = DEFAULT_TEXT_TOKENS,
                image_tokens: int | None = None, images: int = 1, videos: int = 0,
                image_size: tuple[int, int] | None = None, new_tokens: int = 8, plan: LatencyPlan = LatencyPlan(),
                threads: int | None = None, fvcore: bool = False, flops_only: bool = False, seed: int = 0,
                kinds: tuple[str, ...] | None = None, progress=None, frames: int | None = None) -> dict:
    """``withdrawal``, ``flops``, ``latency`` and ``memory`` sections for a loaded model at layer K.

    The prompt: on the fixed LLaVA-1.5 layout, random ordinary token ids around ``images`` image blocks
    (exactly ``text_tokens`` text tokens; the closed form covers every component); for every other family,
    the model's processor and chat template around seeded random images of ``image_size`` and ``videos`` videos
    of ``frames`` frames (the closed form covers the language model and lm_head). FLOPs are counted on the real model through the real withdrawal
    hooks; ``flops_only`` stops there. Latency is timed in pairs as ``plan`` says (``progress``: see
    :func:`vtwcli.measure.latency.measure_latency`).
    """
    from vtwcli.adapters import adapter_for
    from vtwcli.measure.config_video import check_videos
    from vtwcli.validate import check_frames

    model = loaded.model
    adapter = adapter_for(model)
    frames = check_frames(frames, videos)
    check_layer(layer, num_decoder_layers(model), option="--layer")
    adapter.check_kinds(model.config, kinds)
    withdraw(model, layer=layer, kinds=kinds).remove()  # refuses a K that cannot be exact before any measuring
    check_videos(adapter, model.config, videos, images=images)
    if fvcore and not adapter.fixed_image_layout:
        raise VtwError(f"--fvcore traces the LLaVA-1.5 forward (input_ids, pixel_values); {adapter.family} takes "
                       "other inputs: drop --fvcore")
    if adapter.fixed_image_layout:
        if image_size is not None:
            raise _image_size_refused(adapter)
        layout = PromptLayout.for_config(model.config, text_tokens=text_tokens,
                                         image_tokens=_layout_image_tokens(model.config, images, image_tokens))
        adapter.check_prompt_fits(model.config, layout.total)  # before building a prompt of that size
        inputs, prompt = prompt_inputs(loaded, layout, seed=seed), layout
    else:
        if image_tokens is not None:
            raise _image_tokens_refused(adapter)
        inputs, prompt = processor_prompt(loaded, images=images, videos=videos, image_size=image_size,
                                          text_tokens=text_tokens, seed=seed, kinds=kinds, frames=frames)
    adapter.check_prompt_fits(model.config, prompt.total, extra=0 if flops_only else new_tokens,
                              why="" if flops_only else f" + {new_tokens} new tokens (--new-tokens)")
    refuse_kept_blocks(adapter, model.config, kinds, inputs["input_ids"])  # before any measuring, like the layer
    counted = count_flops(model, inputs, layer, kinds=kinds)
    analytic = _analytic_or_none(model.config, prompt, layer, vision=adapter.fixed_image_layout)
    cross_check = fvcore_flops(model, layout, layer, seed=seed, kinds=kinds) if fvcore else None
    flops = flops_section(counted, prompt, analytic=analytic, fvcore=cross_check, counter=COUNTER,
                          convention=flops_convention(model.config))
    sections = {"withdrawal": withdrawal_section(layer, kinds), "flops": flops}
    if flops_only:
        return sections
    ratio = flops["baseline"]["total"] / flops["withdrawn"]["total"] if flops["withdrawn"]["total"] else None
    sections["latency"] = measure_latency(model, inputs, layer, new_tokens=new_tokens, plan=plan, threads=threads,
                                          flops_ratio=ratio, kinds=kinds, progress=progress)
    sections["memory"] = measure_memory(model, inputs, layer, new_tokens=new_tokens, kinds=kinds)
    if loaded.device.type == "cuda":
        torch.cuda.empty_cache()
    return sections


# ------------------------------------------------------------------------------------------ `vtw profile`

@dataclass(frozen=True)
class ProfileOptions:
    """What `vtw profile` measures and where it writes (its options, parsed), as data."""

    model: str | None = None            # hub id or directory; None: --profile's model, else the bundled one
    layer: int | None = None            # K; None: --profile's calibration.layer
    profile: Path | None = None         # a calibration profile: K, kinds and model from it; extended
    output: Path | None = None          # None with a profile: beside it (in place with force)
    force: bool = False
    flops_only: bool = False
    text_tokens: int = DEFAULT_TEXT_TOKENS
    image_tokens: int | None = None
    images: int = 1
    videos: int = 0
    frames: int | None = None           # frames of each video; None: DEFAULT_VIDEO_FRAMES (only with videos)
    image_size: tuple[int, int] | None = None
    new_tokens: int = 8
    latency: LatencyPlan = LatencyPlan()  # pairs, time budget, interval target
    threads: int | None = None          # None: vtwcli.defaults.default_threads()
    device: str = "auto"
    dtype: str = "auto"
    attn: str = "sdpa"
    fvcore: bool = False
    seed: int = 0
    kinds: tuple[str, ...] | None = None  # None: --profile's calibration.withdraw, else every vision token
    generic: bool = False               # an architecture without an entry: derived adapter, verified first

    @property
    def target(self) -> Path | None:
        """The profile written: --output, else beside --profile (itself with --force), else none."""
        if self.output is not None or self.profile is None:
            return self.output
        return self.profile if self.force else self.profile.with_name(f"{self.profile.stem}.profile.yaml")


@dataclass(frozen=True)
class ProfileRun:
    """What :func:`profile_model` measured (the profile sections) and the file it wrote, if any."""

    options: ProfileOptions             # with K, kinds and model resolved
    sections: dict
    written: Path | None


def resolve_from_base(options: ProfileOptions):
    """``(options with K, kinds and model filled in from --profile's calibration, that profile or None)``.

    An option the calibration contradicts is an error, as is no K at all.
    """
    from vtwcli.profile import choice_of, load_profile

    base = None
    if options.profile is not None:
        source = options.profile
        base = load_profile(source)
        if base.calibration is None:
            raise VtwError(f"--profile {source} has no calibration section (no calibration.layer); run "
                           "`vtw calibrate` first or pass --layer K")
        if base.calibration.layer is None:
            raise VtwError(f"--profile {source}: calibration.layer is null (no layer met the KL threshold); "
                           "re-calibrate with a higher --threshold or pass --layer K")
        choice = choice_of(base)
        if options.layer is not None and options.layer != choice.layer:
            raise VtwError(f"--layer {options.layer} contradicts --profile {source} (calibration.layer = "
                           f"{choice.layer}); pass one of them")
        if choice.kinds is not None and options.kinds is not None and tuple(options.kinds) != choice.kinds:
            raise VtwError(f"--withdraw {','.join(options.kinds)} contradicts --profile {source} (calibration."
                           f"withdraw = {','.join(choice.kinds)}); pass one of them")
        named = base.model.name_or_path
        options = dataclasses.replace(
            options, layer=choice.layer, kinds=choice.kinds if choice.kinds is not None else options.kinds,
            model=options.model if options.model is not None or named == "bundled" else named)
    if options.layer is None:
        raise VtwError("no withdrawal layer: pass --layer K or --profile CALIBRATION.yaml (K = calibration.layer)")
    return options, base


def _check_profile_options(options: ProfileOptions) -> None:
    """Every option that needs no model, checked before it loads."""
    from vtwcli.loading import ATTENTION
    from vtwcli.measure.latency import check_timing_options
    from vtwcli.profile import check_output_path
    from vtwcli.validate import check_frames, check_seed

    if options.attn not in ATTENTION:
        raise VtwError(f"--attn {options.attn!r} is not supported; use {' or '.join(ATTENTION)}")
    if options.fvcore and options.flops_only:
        raise VtwError("--fvcore traces the real model and needs weights; drop --flops-only (or --fvcore)")
    check_frames(options.frames, options.videos)
    if options.generic and options.flops_only:
        raise VtwError("--generic verifies the derived adapter on the model's weights first; drop --flops-only")
    check_seed(options.seed)
    if not options.flops_only:
        check_timing_options(new_tokens=options.new_tokens, plan=options.latency, threads=options.threads)
    else:
        from vtwcli.defaults import check_threads

        check_threads(options.threads)
    if options.target is not None:
        # an existing output is refused now, not after the measurements (--profile itself only with --force)
        check_output_path(options.target, "vtw-profile.yaml",
                          overwrite=options.force or options.target == options.profile)


def _measure_config_only(options: ProfileOptions) -> tuple[dict, dict, str]:
    from vtwcli.loading import architecture_of, bundled_model_path, load_config

    config = load_config(str(bundled_model_path()) if options.model is None else options.model)
    architecture_of(config)
    dtype = checkpoint_dtype(config) if options.dtype == "auto" else options.dtype
    meta = meta_model(config, attn=options.attn)
    sections = run_flops_only(config, layer=options.layer, text_tokens=options.text_tokens,
                              image_tokens=options.image_tokens, images=options.images, attn=options.attn,
                              model=meta, kinds=options.kinds, image_size=options.image_size,
                              source=str(bundled_model_path()) if options.model is None else options.model,
                              videos=options.videos, frames=options.frames)
    block = flops_only_model_section("bundled" if options.model is None else options.model, meta, attn=options.attn,
                                     dtype=dtype)
    return sections, block, "cpu"


def _check_same_model(options: ProfileOptions, base, block: dict) -> None:
    """The --profile was made for the model measured (checked before the measuring)."""
    from vtwcli.profile import model_differences

    if base is not None and model_differences(base.model, block, keys=("config_sha256",)):
        raise VtwError(f"--profile {options.profile} was calibrated for another model ({base.model.name_or_path}, "
                       f"config_sha256 {base.model.config_sha256[:12]}...) than --model {block['name_or_path']} "
                       f"({block['config_sha256'][:12]}...); profile the calibrated model")


def _measure_loaded(options: ProfileOptions, busy, base=None,
                    progress=None) -> tuple[dict, dict, torch.device]:
    from vtwcli.loading import load_model, model_section

    loaded = load_model(options.model, device=options.device, dtype=options.dtype, attn=options.attn,
                        generic=options.generic)
    _check_same_model(options, base, model_section(loaded))
    verification = None
    if options.generic:  # the derived adapter is used only once `vtw verify` passed with it (CheckFailed otherwise)
        from vtwcli.generic import adopt_with_section, verification_samples

        with busy("--generic: verifying the derived adapter ..."):
            verification = adopt_with_section(loaded.model, loaded.processor, *verification_samples())
    with busy(f"profiling at K={options.layer} ..."):
        sections = run_profile(loaded, layer=options.layer, text_tokens=options.text_tokens,
                               image_tokens=options.image_tokens, images=options.images, videos=options.videos,
                               image_size=options.image_size, kinds=options.kinds, new_tokens=options.new_tokens,
                               plan=options.latency, threads=options.threads, fvcore=options.fvcore,
                               seed=options.seed, progress=progress, frames=options.frames)
    if verification is not None:
        sections["verification"] = verification
    return sections, model_section(loaded), loaded.device


def profile_model(options: ProfileOptions, *, busy=lambda text: contextlib.nullcontext(), progress=None) -> ProfileRun:
    """`vtw profile` as one call: resolve K / kinds / model from the base profile, measure (config only or
    the loaded model), check the base profile was made for this model, extend it (or start a new profile)
    and write it when there is a target. ``busy(text)`` is a context manager shown around the measuring;
    ``progress(state)`` hears about each timed latency pair."""
    from vtwcli.profile import extend_profile, new_profile, write_profile

    _check_profile_options(options)
    options, base = resolve_from_base(options)
    if options.flops_only:
        sections, block, device = _measure_config_only(options)
    else:
        sections, block, device = _measure_loaded(options, busy, base, progress)
    if base is None:
        data = new_profile(block, device)
        data.update(sections)
    else:
        _check_same_model(options, base, block)
        data = extend_profile(base.raw, device, sections)
    target = options.target
    written = None if target is None else write_profile(
        data, target, force=options.force or (options.profile is not None and target == options.profile))
    return ProfileRun(options, sections, written)
