"""Evaluation datasets: JSONL files of image questions, the bundled sets, seeded sampling.

A dataset is a JSONL file, one sample per line (see ``docs/datasets.md``)::

    {"id": "color-0001", "task": "color", "image": "images/color-0001.png",
     "question": "What color is the circle?", "answer": "red"}

Optional ``"choices": [...]`` makes a multiple-choice sample (the answer is then a letter or the exact
text of one choice; it is stored as the letter), and ``"images": [...]`` replaces ``"image"`` for
several images. Image paths are relative to the JSONL file's directory (absolute paths work too).

A bundled dataset is a directory ``vtwcli/data/datasets/<name>/`` holding ``data.jsonl``, ``images/``
and ``README.md`` (with optional front matter ``description:`` / ``licence:`` / ``source:``, or a
``meta.json`` with the same keys). Every problem is raised as a one-line :class:`VtwError` that names
the file, the line and what to do. Nothing here imports torch. Prompts, batches and answer scoring
are in :mod:`vtwcli.prompts`.
"""

from __future__ import annotations

import json
import random
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vtwcli.atomic import not_regular
from vtwcli.dataset_meta import file_sha256, read_meta
from vtwcli.errors import VtwError

__all__ = [
    "BUNDLED_DIR",
    "Sample",
    "Dataset",
    "DatasetInfo",
    "bundled_datasets",
    "load_dataset",
    "sample_dataset",
    "default_datasets",
    "normalize_answer",
    "file_sha256",
    "check_image_mode",
    "corrupt_image_message",
]

# Moved to vtwcli.prompts (samples -> model inputs, answers -> scores); still importable from here.
_IN_PROMPTS = frozenset({"load_images", "load_videos", "question_text", "build_prompt", "chat_prompt", "make_batch",
                         "score_answer"})


def __getattr__(name: str):
    if name in _IN_PROMPTS:
        import vtwcli.prompts

        return getattr(vtwcli.prompts, name)
    raise AttributeError(f"module 'vtwcli.datasets' has no attribute {name!r}")

BUNDLED_DIR = Path(__file__).parent / "data" / "datasets"
DATA_FILE = "data.jsonl"
DEFAULT_TASK = "qa"
LETTERS = string.ascii_uppercase

# PIL modes that convert to RGB without losing meaning. High-bit-depth and float modes ("I", "F",
# "I;16*") are refused: converting them clips every value above 255, silently wrecking the picture.
# Alpha modes are composited onto white; "P" with transparency goes through RGBA first.
CONVERTIBLE_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)


@dataclass(frozen=True)
class Sample:
    """One question about one or more images and/or videos (a video: its frame images, in order).
    ``line`` is the 1-based line in ``file``."""

    id: str
    task: str
    images: list[Path] = field(hash=False)
    question: str
    answer: str
    choices: list[str] | None = field(default=None, hash=False)
    line: int = 0
    file: Path | None = None
    videos: list[list[Path]] = field(default_factory=list, hash=False)

    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.choices)

    @property
    def answer_text(self) -> str:
        """The answer as text: the correct choice's text for multiple choice, else ``answer``."""
        if self.choices and len(self.answer) == 1 and self.answer in LETTERS:
            return self.choices[LETTERS.index(self.answer)]
        return self.answer

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file is not None else f"sample {self.id!r}"


@dataclass(frozen=True)
class DatasetInfo:
    """What ``vtw datasets`` lists about a dataset, without opening its images."""

    name: str
    path: Path
    tasks: list[str]
    num_samples: int
    sha256: str
    licence: str = "unknown"
    source: str = ""
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "tasks": list(self.tasks),
            "samples": self.num_samples,
            "sha256": self.sha256,
            "licence": self.licence,
            "source": self.source,
            "description": self.description,
        }


@dataclass(frozen=True)
class Dataset:
    """A loaded, validated dataset. ``sha256`` is the hash of the JSONL file's bytes."""

    name: str
    path: Path
    sha256: str
    samples: list[Sample]
    licence: str = "unknown"
    source: str = ""
    description: str = ""
    bundled: bool = False

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def tasks(self) -> list[str]:
        return sorted({s.task for s in self.samples})

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=self.name,
            path=self.path,
            tasks=self.tasks,
            num_samples=len(self.samples),
            sha256=self.sha256,
            licence=self.licence,
            source=self.source,
            description=self.description,
        )


# ----------------------------------------------------------------------------------------------------------
# Parsing


def _bundled_dirs() -> dict[str, Path]:
    if not BUNDLED_DIR.is_dir():
        return {}
    return {
        d.name: d
        for d in sorted(BUNDLED_DIR.iterdir())
        if d.is_dir() and (d / DATA_FILE).is_file() and not d.name.startswith((".", "_"))
    }


def _string_field(obj: dict, key: str, where: str, *, required: bool = True, numbers: bool = False) -> str | None:
    if key not in obj:
        if required:
            raise VtwError(f"{where}: missing field {key!r}; every sample needs id, question, answer and image")
        return None
    value = obj[key]
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        kind = "string or number" if numbers else "string"
        raise VtwError(f"{where}: field {key!r} must be a {kind}, got {type(value).__name__}")
    if not value.strip():
        raise VtwError(f"{where}: field {key!r} is empty; give it a value")
    return value.strip()


_OPTIONAL_NULLABLE = frozenset({"task", "image", "images", "video", "videos", "choices"})
_LETTER_PREFIX = re.compile(r"^\s*\(?([A-Za-z])\s*[.):]\s+")


def _parse_choices(obj: dict, where: str) -> list[str] | None:
    if "choices" not in obj or obj["choices"] is None:
        return None
    choices = obj["choices"]
    if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
        raise VtwError(f"{where}: field 'choices' must be a list of non-empty strings")
    if not 2 <= len(choices) <= len(LETTERS):
        raise VtwError(f"{where}: field 'choices' needs 2 to {len(LETTERS)} options, got {len(choices)}")
    # Drop "A. " / "(B) " prefixes when every choice carries its own letter: they are rendered again.
    matches = [_LETTER_PREFIX.match(c) for c in choices]
    if all(m and m.group(1).upper() == LETTERS[i] for i, m in enumerate(matches)):
        choices = [c[m.end():] for c, m in zip(choices, matches)]  # type: ignore[union-attr]
    choices = [c.strip() for c in choices]
    if any(not c for c in choices):
        raise VtwError(f"{where}: a choice is empty once its letter prefix is removed")
    return choices


_ARTICLES = {"a", "an", "the"}
_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_PUNCT = re.compile(r"[^\w\s]|_")

def normalize_answer(text: str) -> str:
    """Lowercase, punctuation to spaces, drop articles, number words to digits, collapse whitespace."""
    words = _PUNCT.sub(" ", str(text).lower()).split()
    return " ".join(_NUMBER_WORDS.get(w, w) for w in words if w not in _ARTICLES)


def _canonical_choice_answer(answer: str, choices: list[str], where: str) -> str:
    letters = LETTERS[: len(choices)]
    stripped = answer.strip().strip("().: ").upper()
    if len(stripped) == 1 and stripped in letters:
        return stripped
    target = normalize_answer(answer)
    hits = [i for i, c in enumerate(choices) if normalize_answer(c) == target]
    if len(hits) == 1:
        return letters[hits[0]]
    raise VtwError(
        f"{where}: answer {answer!r} is neither a letter {letters[0]}-{letters[-1]} nor exactly one of the choices; "
        "give the correct option's letter"
    )


def _paths(raw: list, key: str, base: Path, where: str) -> list[Path]:
    paths = []
    for item in raw:
        if not isinstance(item, str) or not item.strip():
            raise VtwError(f"{where}: field {key!r} must hold non-empty path strings, got {item!r:.60}")
        if "\x00" in item:
            raise VtwError(f"{where}: image path contains a NUL byte")
        path = Path(item.strip())
        paths.append(path if path.is_absolute() else base / path)
    return paths


def _video_paths(obj: dict, base: Path, where: str) -> list[list[Path]]:
    """``"video": [frame, ...]`` or ``"videos": [[frame, ...], ...]``: each video as its frame images."""
    has_one, has_many = "video" in obj, "videos" in obj
    if has_one and has_many:
        raise VtwError(f"{where}: give either 'video' or 'videos', not both")
    if not has_one and not has_many:
        return []
    raw = [obj["video"]] if has_one else obj["videos"]
    if not isinstance(raw, list) or not raw or not all(isinstance(v, list) and v for v in raw):
        shape = "a list of frame paths" if has_one else "a list of videos, each a list of frame paths"
        raise VtwError(f"{where}: field {'video' if has_one else 'videos'!r} must be {shape} (non-empty)")
    return [_paths(frames, "video" if has_one else "videos", base, where) for frames in raw]


def _image_paths(obj: dict, base: Path, where: str, *, has_video: bool = False) -> list[Path]:
    has_one, has_many = "image" in obj, "images" in obj
    if has_one and has_many:
        raise VtwError(f"{where}: give either 'image' or 'images', not both")
    if not has_one and not has_many:
        if has_video:
            return []
        raise VtwError(f"{where}: sample has no image; add \"image\": \"<path>\" (or \"images\": [...], or a "
                       "\"video\": [frame paths])")
    raw = [obj["image"]] if has_one else obj["images"]
    if has_many and not isinstance(raw, list):
        raise VtwError(f"{where}: field 'images' must be a list of paths, got {type(raw).__name__}")
    if not raw:
        raise VtwError(f"{where}: sample has no image ('images' is empty); list at least one path")
    return _paths(raw, "image" if has_one else "images", base, where)


def _check_image(path: Path, where: str) -> None:
    """Exists, is an image PIL can identify and verify, and in a mode we can turn into RGB."""
    from vtwcli.prompts import require_regular_image  # (prompts imports this module)

    try:
        require_regular_image(path, where)
        with Image.open(path) as image:
            mode = image.mode
            image.verify()
    except VtwError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as error:
        raise VtwError(corrupt_image_message(where, path, error)) from None
    except Exception as error:  # PIL raises odd types on hostile files (e.g. struct.error, DecompressionBombError)
        raise VtwError(corrupt_image_message(where, path, error)) from None
    check_image_mode(mode, path, where)


def corrupt_image_message(where: str, path: Path, error: BaseException) -> str:
    return f"{where}: image {path} is unreadable or corrupt ({type(error).__name__}: {error}); replace the file"


def check_image_mode(mode: str, path: Path, where: str) -> None:
    if mode not in CONVERTIBLE_MODES:
        raise VtwError(
            f"{where}: image {path} has mode {mode!r}, which does not convert to RGB without clipping; "
            "save it as 8-bit RGB, RGBA, L or P"
        )


def _parse_jsonl(path: Path, *, check_images: bool) -> list[Sample]:
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise VtwError(f"{path} is a directory; give the JSONL file (or a folder with {DATA_FILE})") from None
    except OSError as error:
        raise VtwError(f"cannot read {path}: {error.strerror or error}; check the path and its permissions") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    base = path.parent
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for number, raw_line in enumerate(raw.split(b"\n"), start=1):
        where = f"{path}:{number}"
        try:
            text = raw_line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise VtwError(f"{where}: not valid UTF-8 (byte {error.start}); save the file as UTF-8") from None
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as error:
            raise VtwError(
                f"{where}: invalid JSON ({error.msg} at column {error.colno}); each line must be one JSON object"
            ) from None
        except (RecursionError, ValueError) as error:
            raise VtwError(f"{where}: invalid JSON ({type(error).__name__}); each line must be one JSON object") from None
        if not isinstance(obj, dict):
            raise VtwError(
                f"{where}: expected a JSON object, got {type(obj).__name__}; each line must be one sample object"
            )
        # null optional fields count as absent ("image": null next to "images": [...] is fine)
        obj = {k: v for k, v in obj.items() if not (v is None and k in _OPTIONAL_NULLABLE)}
        sample_id = obj.get("id")
        if isinstance(sample_id, int) and not isinstance(sample_id, bool):
            obj = {**obj, "id": str(sample_id)}
        sample_id = _string_field(obj, "id", where)
        assert sample_id is not None
        if sample_id in seen:
            raise VtwError(f"{where}: duplicate id {sample_id!r} (first on line {seen[sample_id]}); ids must be unique")
        seen[sample_id] = number
        question = _string_field(obj, "question", where)
        answer = _string_field(obj, "answer", where, numbers=True)
        task = _string_field(obj, "task", where, required=False) or DEFAULT_TASK
        videos = _video_paths(obj, base, where)
        images = _image_paths(obj, base, where, has_video=bool(videos))
        choices = _parse_choices(obj, where)
        assert question is not None and answer is not None
        if choices:
            answer = _canonical_choice_answer(answer, choices, where)
        if check_images:
            for image_path in images + [frame for frames in videos for frame in frames]:
                _check_image(image_path, where)
        samples.append(
            Sample(
                id=sample_id,
                task=task,
                images=images,
                question=question,
                answer=answer,
                choices=choices,
                line=number,
                file=path,
                videos=videos,
            )
        )
    if not samples:
        raise VtwError(f"{path}: the dataset is empty (no samples); add one JSON object per line")
    return samples


# ----------------------------------------------------------------------------------------------------------
# Public API


def bundled_datasets() -> list[DatasetInfo]:
    """The datasets shipped in ``vtwcli/data/datasets/``, sorted by name (images are not opened)."""
    infos = []
    for name, directory in _bundled_dirs().items():
        jsonl = directory / DATA_FILE
        samples = _parse_jsonl(jsonl, check_images=False)
        meta = read_meta(directory)
        infos.append(
            DatasetInfo(
                name=name,
                path=jsonl,
                tasks=sorted({s.task for s in samples}),
                num_samples=len(samples),
                sha256=file_sha256(jsonl),
                licence=meta.get("licence", "unknown"),
                source=meta.get("source", ""),
                description=meta.get("description", ""),
            )
        )
    return infos


def _resolve(name_or_path: str | Path) -> tuple[str, Path, bool]:
    """(name, jsonl path, bundled?) for a bundled name, a JSONL path or a dataset directory."""
    text = str(name_or_path)
    if not text.strip():
        raise VtwError("no dataset given; pass a bundled name (see `vtw datasets`) or a path to a JSONL file")
    if "\x00" in text:
        raise VtwError(f"dataset path {text!r} contains a NUL byte")
    bundled = _bundled_dirs()
    if isinstance(name_or_path, str) and name_or_path in bundled:
        return name_or_path, bundled[name_or_path] / DATA_FILE, True
    path = Path(name_or_path).expanduser()
    try:
        if path.is_dir():
            if (path / DATA_FILE).is_file():
                return path.resolve().name, path / DATA_FILE, False
            raise VtwError(f"{path} is a directory without {DATA_FILE}; give the JSONL file itself")
        if path.is_file():
            name = path.parent.resolve().name if path.name == DATA_FILE else path.stem
            return name, path, False
        why = not_regular(path)  # a FIFO or a device would block or never end; a file used as a folder
        if why:
            raise VtwError(f"dataset {path} {why}; give the JSONL file")
    except OSError as error:
        raise VtwError(f"cannot access {path}: {error.strerror or error}") from None
    looks_like_path = (
        isinstance(name_or_path, Path) or "/" in text or "\\" in text or text.endswith((".jsonl", ".json"))
    )
    if looks_like_path:
        raise VtwError(f"dataset file not found: {path}; check the path (or use a bundled name, see `vtw datasets`)")
    known = ", ".join(bundled) or "none installed"
    raise VtwError(f"unknown dataset {text!r}; bundled datasets: {known} (or pass a path to a JSONL file)")


def load_dataset(name_or_path: str | Path) -> Dataset:
    """Load and validate a bundled dataset (by name) or a JSONL file (by path).

    Checks every line (JSON, fields, unique ids, choices) and every image (exists, decodable header,
    convertible mode) and raises a one-line :class:`VtwError` naming the file and line on the first problem.
    """
    name, path, bundled = _resolve(name_or_path)
    samples = _parse_jsonl(path, check_images=True)
    meta = read_meta(path.parent) if path.name == DATA_FILE else {}
    return Dataset(
        name=name,
        path=path,
        sha256=file_sha256(path),
        samples=samples,
        licence=meta.get("licence", "unknown"),
        source=meta.get("source", ""),
        description=meta.get("description", ""),
        bundled=bundled,
    )


def sample_dataset(dataset: Dataset, n: int | None, seed: int) -> list[Sample]:
    """A seeded random subset of ``n`` samples without replacement, returned in file order.

    ``n=None`` returns every sample. The draw is a seeded shuffle truncated to ``n``, so for one seed a
    smaller ``n`` picks a subset of a larger one. ``n <= 0`` or ``n`` above the dataset's size is an error.
    """
    available = len(dataset.samples)
    if n is None:
        return list(dataset.samples)
    if isinstance(n, bool) or not isinstance(n, int):
        raise VtwError(f"sample size must be an integer, got {n!r}")
    if n <= 0:
        raise VtwError(f"sample size must be at least 1, got {n}; dataset {dataset.name!r} has {available} samples")
    if n > available:
        raise VtwError(
            f"asked for {n} samples but dataset {dataset.name!r} has only {available} available; use n <= {available}"
        )
    order = _draw_order(available, seed)
    return [dataset.samples[i] for i in sorted(order[:n])]


def _draw_order(available: int, seed: int) -> list[int]:
    order = list(range(available))
    random.Random(seed).shuffle(order)
    return order


def draw_order(dataset: Dataset, seed: int) -> list[Sample]:
    """Every sample in the seeded draw order: its first n, put in file order, are ``sample_dataset(n, seed)``
    (``--samples auto`` draws in this order, so it stops on the same set a fixed ``--samples n`` takes)."""
    return [dataset.samples[i] for i in _draw_order(len(dataset.samples), seed)]


def default_datasets(is_bundled: bool) -> list[str]:
    """Synthetic sets for the bundled model (what it was trained on), photographs for real models."""
    prefix = "synthetic_" if is_bundled else "photo_"
    return [info.name for info in bundled_datasets() if info.name.startswith(prefix)]
