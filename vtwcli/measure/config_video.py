"""Videos in config-only FLOPs (`vtw profile --flops-only --videos N --frames F`).

The video processor comes from the config files alone (transformers' own class, built from
``video_preprocessor_config.json``, else ``preprocessor_config.json``; it needs torchvision). The tokens per
video are the adapter's rule (``Adapter.video_tokens``, vtwcli/vision_tokens.py); the vision tower's input is
what that processor makes of seeded random videos of F frames of W x H, which
:mod:`vtwcli.measure.config_flops` hands to the model's own ``get_video_features`` on the meta device.

F is the number of frames the model sees: the processor's frame sampling (``do_sample_frames``) is turned off
here and in the loaded model's synthetic prompt (:func:`frames_as_given`), so ``--frames`` is the sampled count;
the frames' timestamps are those of frames sampled at the processor's own rate (``fps``, else 2 per second).
"""

from __future__ import annotations

from torch import nn

from vtwcli.errors import UnsupportedError, VtwError, error_text, is_out_of_memory
from vtwcli.measure.config_flops import PROCESSOR_FILE_FAULTS, RULE_FAULTS, broken_processor_file, rule_fault

__all__ = ["COUNTER_CONFIG_VIDEOS", "check_videos", "video_processor_for_flops", "video_tokens_per_video", "video_processor_output",
           "frames_as_given"]

COUNTER_CONFIG_VIDEOS = ("torch.utils.flop_counter.FlopCounterMode on the meta device (config.json and the processor "
                         "config files only: the vision features of seeded random W x H images and videos of F frames, "
                         "then the language model on text + vision positions, layers >= K on the text positions)")


def check_videos(adapter, config, videos: int, *, images: int = 0, config_only: bool = False) -> None:
    """Refuse ``--videos`` on a model that takes no video, beside ``images`` on a family whose forward cannot take
    both (video frames as image tokens), and (config only) on a family without a video rule."""
    if not videos:
        return
    if not adapter.accepts_video(config):
        raise VtwError(f"--videos {videos}: {adapter.family} takes no video input; drop --videos")
    if images and adapter.video_frames_as_images:
        raise VtwError(f"--images {images} --videos {videos}: {adapter.family}'s video frames carry the image token, "
                       "and its forward (transformers) cannot take images and videos in one prompt; add --images 0 "
                       "(or drop --videos)")
    if config_only and adapter.video_tokens is None:
        raise UnsupportedError(f"--videos with --flops-only: {adapter.family} has no config-only video-token rule "
                               "(Adapter.video_tokens) yet; drop --flops-only to count on the loaded model, or drop "
                               "--videos")


def video_processor_for_flops(source: str, family: str):
    """The video processor of a config-only directory (or hub id), from its processor config files only."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # one-off notes of a processor (e.g. Qwen2-VL's pixel cap) are not our output
    try:
        from transformers import AutoVideoProcessor

        return AutoVideoProcessor.from_pretrained(source)
    except ImportError:
        import torch

        raise VtwError(f"--videos with --flops-only: {family}'s video processor (transformers) needs torchvision, "
                       f"which does not import here; install the torchvision that matches torch {torch.__version__}, "
                       "or drop --videos") from None
    except PROCESSOR_FILE_FAULTS as error:
        raise broken_processor_file(source, "video", error) or VtwError(
            f"--videos with --flops-only: {family} sizes its video tokens from the video processor, so it needs "
            "video_preprocessor_config.json (or preprocessor_config.json) beside config.json in "
            f"{source} ({type(error).__name__}); copy it from the model repository") from None


def video_tokens_per_video(model: nn.Module, video_processor, frames: int, width: int, height: int) -> int:
    from vtwcli.adapters import adapter_for

    adapter = adapter_for(model)
    check_videos(adapter, model.config, 1, config_only=True)
    try:
        return int(adapter.video_tokens(model.config, video_processor, frames, width, height))
    except ValueError as error:  # the processor's own refusal (Qwen's aspect ratio of at most 200, Qwen3-VL's and
        # GLM's fewer frames than the temporal patch)
        raise VtwError(f"--frames {frames} --image-size {width}x{height}: the video processor rejects such a video "
                       f"({error}); use more frames or a less extreme size") from None
    except RULE_FAULTS as error:
        raise rule_fault(adapter.family, "video", "its video processor config", error) from None


def frames_as_given(processor, clips: list) -> dict:
    """Keyword arguments that make ``processor`` (or its video processor) take every frame of ``clips`` as given,
    frames sampled at the video processor's own rate (its ``fps``, else DEFAULT_VIDEO_FPS): ``do_sample_frames=False``
    and ``video_metadata`` (fps, frame indices 0..F-1), from which the processors that write frame timestamps
    into the prompt (Qwen3-VL, GLM-4V, Gemma 4) take them (without it they assume 24 fps, with a warning); and
    channels last (``input_data_format``: a frame 1 or 3 pixels high would otherwise be read as channels first).
    Nothing for a processor that is not a transformers video processor (stand-ins take no such argument)."""
    from vtwcli.defaults import DEFAULT_VIDEO_FPS

    video_processor = getattr(processor, "video_processor", processor)
    if not hasattr(video_processor, "do_sample_frames"):
        return {}
    fps = getattr(video_processor, "fps", None) or DEFAULT_VIDEO_FPS
    metadata = [{"total_num_frames": len(clip), "fps": fps, "duration": len(clip) / fps, "height": clip.shape[1],
                 "width": clip.shape[2], "frames_indices": list(range(len(clip)))} for clip in clips]
    given = {"do_sample_frames": False, "video_metadata": metadata}
    if hasattr(video_processor, "input_data_format"):
        given["input_data_format"] = "channels_last"
    return given


def video_processor_output(video_processor, videos: int, frames: int, width: int, height: int, seed: int) -> dict:
    """What the video processor makes of ``videos`` seeded random videos of ``frames`` frames of W x H."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)  # not the images' stream: a prompt may hold both
    clips = [rng.integers(0, 256, size=(frames, height, width, 3), dtype=np.uint8) for _ in range(videos)]
    try:
        return dict(video_processor(videos=clips, return_tensors="pt", **frames_as_given(video_processor, clips)))
    except Exception as error:  # noqa: BLE001 - the video processor's own refusal, in one line
        if is_out_of_memory(error):
            raise
        raise VtwError(f"the video processor rejected {videos} video(s) of {frames} frame(s) of {width}x{height} "
                       f"({error_text(error)}); check the values of its processor config, or use fewer --frames or "
                       "another --image-size") from None
