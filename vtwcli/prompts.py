"""From samples to model inputs and back: images and videos as RGB, prompts through the chat template,
padded batches, and scoring of generated answers. Nothing here imports torch; transformers objects
(processors, tokenizers) are duck-typed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from PIL import Image

from vtwcli.atomic import not_regular
from vtwcli.datasets import LETTERS, Sample, check_image_mode, corrupt_image_message, normalize_answer
from vtwcli.errors import VtwError

__all__ = ["load_images", "load_videos", "question_text", "build_prompt", "chat_prompt", "make_batch",
           "score_answer"]

_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_videos(sample: Sample) -> list:
    """The sample's videos, each a uint8 array (frames, height, width, 3) of its RGB frames."""
    import numpy as np

    videos = []
    for frames in sample.videos:
        pictures = _load_rgb(frames, sample.where())
        sizes = {p.size for p in pictures}
        if len(sizes) > 1:
            listed = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
            raise VtwError(f"{sample.where()}: the frames of a video differ in size ({listed}); resize them to one "
                           "size")
        videos.append(np.stack([np.asarray(p) for p in pictures]))
    return videos


def load_images(sample: Sample) -> list[Image.Image]:
    """The sample's images decoded and converted to RGB (alpha composited on white; first frame only)."""
    return _load_rgb(sample.images, sample.where())


def require_regular_image(path: Path, where: str) -> None:
    """A regular file (or a link to one): a FIFO would block the open, a device would be read forever."""
    why = not_regular(path)
    if why:
        raise VtwError(f"{where}: image {path} {why}; point at an image file")
    if not path.is_file():
        raise VtwError(f"{where}: image file not found: {path}; fix the path (relative paths start at the JSONL's "
                       "folder)")


def _load_rgb(paths: list[Path], where: str) -> list[Image.Image]:
    images = []
    for path in paths:
        try:
            require_regular_image(path, where)
            with Image.open(path) as image:
                check_image_mode(image.mode, path, where)
                image.load()
                images.append(_to_rgb(image))
        except VtwError:
            raise
        except FileNotFoundError:
            raise VtwError(f"{where}: image file not found: {path}; fix the path") from None
        except Exception as error:
            raise VtwError(corrupt_image_message(where, path, error)) from None
    return images


def question_text(sample: Sample) -> str:
    """The question, plus the choices as ``A. ...`` lines and the letter instruction for multiple choice."""
    if not sample.choices:
        return sample.question
    lines = [sample.question]
    lines += [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(sample.choices)]
    lines.append("Answer with the option's letter.")
    return "\n".join(lines)


def build_prompt(processor: Any, sample: Sample) -> str:
    """The text prompt for one sample: the processor's chat template if it has one, else a LLaVA-style fallback."""
    return chat_prompt(processor, len(sample.images), question_text(sample), videos=len(sample.videos),
                       where=sample.where())


def chat_prompt(processor: Any, images: int, text: str, *, videos: int = 0, where: str = "prompt") -> str:
    """A user turn of ``images`` images, ``videos`` videos, then ``text``, ready for generation.

    With a chat template: one ``{"type": "image"}`` entry per image and one ``{"type": "video"}`` per video,
    then the text, rendered with ``add_generation_prompt=True``. Without: ``"USER: <image>\n{text}\nASSISTANT:"``,
    using ``processor.image_token`` (default ``"<image>"``) once per image and ``video_token`` per video.
    """
    if getattr(processor, "chat_template", None):
        content: list[dict[str, str]] = [{"type": "image"} for _ in range(images)]
        content += [{"type": "video"} for _ in range(videos)]
        content.append({"type": "text", "text": text})
        messages = [{"role": "user", "content": content}]
        try:
            return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as error:  # jinja2 errors, template raise_exception(...)
            raise VtwError(
                f"{where}: the processor's chat template failed ({type(error).__name__}: {error}); "
                "check the model's chat template"
            ) from None
    image_token, video_token = _token(processor, "image_token", "<image>"), _token(processor, "video_token", "<video>")
    return ("USER: " + "".join(f"{image_token}\n" for _ in range(images))
            + "".join(f"{video_token}\n" for _ in range(videos)) + f"{text}\nASSISTANT:")


def _token(processor: Any, name: str, default: str) -> str:
    value = getattr(processor, name, None)
    return value if isinstance(value, str) and value else default


def make_batch(processor: Any, samples: list[Sample]):
    """Run the processor on a batch: prompts + RGB images, left padding, ``return_tensors="pt"``."""
    if not samples:
        raise VtwError("cannot build a batch from zero samples; pass at least one sample")
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"
    prompts = [build_prompt(processor, s) for s in samples]
    # One list of images per sample: every processor accepts it, and some (Gemma 3, Idefics3) read a flat
    # list as all images belonging to the first prompt.
    images = [load_images(s) for s in samples]
    media = {"images": images} if any(images) else {}
    videos = [video for s in samples for video in load_videos(s)]
    if videos:  # processors take the batch's videos as one flat list, matched to placeholders in order
        media["videos"] = videos
    try:
        batch = processor(text=prompts, return_tensors="pt", padding=True, **media)
    except ValueError as error:
        ids = ", ".join(s.id for s in samples[:5]) + (" ..." if len(samples) > 5 else "")
        lost = next((s for s, p in zip(samples, prompts) if not _has_image_placeholder(processor, p)), None)
        if lost is not None:
            raise VtwError(
                f"{lost.where()}: the prompt has no vision tokens (the chat template dropped the image placeholder "
                f"{_image_placeholder(processor)!r}); fix the model's chat template so it renders "
                "{\"type\": \"image\"} entries"
            ) from None
        raise VtwError(f"the processor rejected the batch ({ids}): {error}") from None
    batch.pop("labels", None)  # PaliGemma's processor adds training labels; inference takes none
    return batch


def _placeholders(processor: Any) -> list[str]:
    """Strings a prompt holds where an image goes: the image token, or a begin-of-image token (Gemma 3)."""
    found = []
    for owner in (processor, getattr(processor, "tokenizer", None)):
        for key in ("image_token", "boi_token", "start_image_token"):
            value = getattr(owner, key, None)
            if isinstance(value, str) and value and value not in found:
                found.append(value)
    return found


def _image_placeholder(processor: Any) -> str:
    return next(iter(_placeholders(processor)), "<image>")


def _has_image_placeholder(processor: Any, prompt: str) -> bool:
    markers = _placeholders(processor)
    return not markers or any(marker in prompt for marker in markers)


# ----------------------------------------------------------------------------------------------------------
# Scoring

_ANSWER_PREFIX = re.compile(r"^\s*(?:the\s+)?(?:correct\s+)?(?:answer|option)\s*(?:is|:)?\s*[:\-]?\s*", re.IGNORECASE)
_LETTER_ANSWER = re.compile(r"^\s*(?:\(\s*([A-Za-z])\s*\)|([A-Za-z])\s*(?:[.):]|$))")


def _strip_answer_prefix(prediction: str) -> str:
    return _ANSWER_PREFIX.sub("", prediction, count=1)


def score_answer(prediction: str, sample: Sample) -> bool:
    """Is ``prediction`` correct? Normalised exact match; for multiple choice the letter or the choice text.

    Accepted letter forms: ``B``, ``b``, ``B.``, ``(B)``, ``B)``, ``b) cat``, ``B: cat``, ``Answer: B``. A bare
    ``A cat`` is read as text, not as option A. The letter must be the correct one; text must equal the
    correct choice (or the stored answer) after normalisation.
    """
    if not isinstance(prediction, str):
        return False
    candidates = [prediction.strip(), _strip_answer_prefix(prediction.strip())]
    if sample.choices:
        letters = LETTERS[: len(sample.choices)]
        for candidate in candidates:
            match = _LETTER_ANSWER.match(candidate)
            if match:
                letter = (match.group(1) or match.group(2)).upper()
                if letter in letters:
                    return letter == sample.answer
        targets = {normalize_answer(sample.answer_text)}
    else:
        targets = {normalize_answer(sample.answer)}
    targets.discard("")
    return any(normalize_answer(c) in targets for c in candidates)


def refuse_videos_without_video_input(adapter: Any, config: Any, samples, command: str) -> None:
    """A sample with a video for a model that takes no video: its chat template and processor would drop the video
    without a word (``command``: the verb of the way out, e.g. "calibrate")."""
    if adapter.accepts_video(config):
        return
    with_video = next((sample for sample in samples if sample.videos), None)
    if with_video is not None:
        raise VtwError(f"{with_video.where()}: the sample has a video but {adapter.family} takes no video input; drop "
                       f"its video (or {command} a model with video input)")


def check_prompts_fit(processor: Any, config: Any, adapter: Any, sample_lists: list[list[Sample]], *,
                      batch_size: int, answers: bool = False, new_tokens: int = 0) -> None:
    """Every prompt (with its vision tokens, plus the reference answer under teacher forcing or the
    ``new_tokens`` an accuracy run generates) fits the model's context: refused before any forward, never
    silently run past the positions the model was trained for."""
    if adapter.context_limit(config) is None:
        return
    tokenizer = processor.tokenizer
    for samples in sample_lists:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            lengths = make_batch(processor, chunk)["attention_mask"].sum(dim=1).tolist()
            for sample, prompt in zip(chunk, lengths):
                extra, why = 0, ""
                if answers:
                    extra = len(tokenizer(sample.answer_text, add_special_tokens=False)["input_ids"])
                    why = f" + {extra} answer tokens"
                if new_tokens > extra:
                    extra, why = new_tokens, f" + {new_tokens} new tokens (--max-new-tokens)"
                adapter.check_prompt_fits(config, int(prompt), extra=extra, why=why,
                                          what=f"{sample.where()}: the prompt",
                                          fix="shorten the question or drop the sample")
