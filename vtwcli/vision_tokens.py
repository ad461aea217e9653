"""How many vision tokens one image of W x H becomes, from the config files alone (no weights, no pixels).

Each rule takes the model config, the image processor built from ``preprocessor_config.json`` (transformers'
own class for it, PIL backend where torchvision is missing: configuration only), the image size and the
number of images in the prompt, and returns the tokens the processor inserts for one such image, i.e. what
withdrawal removes. An adapter entry
names its family's rule (``Adapter.image_tokens``): supporting a new dynamic-resolution family in
``vtw profile --flops-only`` is one line there when one of these rules fits.

* :func:`merged_patches` — Qwen2-VL / Qwen2.5-VL / Qwen3-VL / GLM-4.xV style: the image is resized to a
  multiple of patch x merge within [min_pixels, max_pixels]; tokens = patches / merge^2.
* :func:`fixed_per_image` — one count whatever the size: Gemma 3's ``mm_tokens_per_image``, the patch grid of
  LLaVA-1.5, VipLLaVA, PaliGemma, DeepSeek-VL, Janus and Video-LLaVA's images.
* :func:`tiles` — InternVL, Aya Vision, Cohere2 Vision: the image processor's tiles (InternVL / Aya: the grid
  closest to the aspect ratio, their processors always tile, whatever the file says: :func:`processor_call_defaults`;
  Cohere2: the grid needing the least upscaling) + a thumbnail when more than one, x tokens per tile.
* :func:`covering_tiles` — Ovis2: the fewest tiles covering 90 % of the image + the whole image, <IMG_ATOM> only.
* :func:`smart_resized_tiles` — LFM2-VL: one smart-resized view, or (too big for one) tiles + that view.
* :func:`split_tiles` — Idefics3 / SmolVLM: a grid of tiles plus the global view x tokens per tile (Idefics2:
  the perceiver's latents for the image and, when it splits, each of its 4 crops).
* :func:`merged_grid` — Mistral3 (Pixtral encoder), LightOnOCR: the image shrunk to fit ``longest_edge``,
  each side rounded up to the image processor's patch size (PixtralProcessor hands it patch x merge:
  :func:`pixtral_patch_size`); one token per merged patch. Pixtral's row breaks and end token are kept tokens,
  not counted here.
* :func:`pooled_patches` — Gemma 4: the image resized (aspect ratio kept) to the largest multiple of
  patch x pooling kernel within ``max_soft_tokens`` x kernel^2 patches; one token per pooled kernel.
* :func:`anyres` — LLaVA-NeXT / LLaVA-OneVision / LLaVA-NeXT-Video / Granite4-Vision: the base view + the
  best-fitting pinpoint grid, unpadded, one newline feature per row (OneVision: pooled down to ``anyres_max_N``
  base views; Granite4: every view's grid shrunk by ``downsample_rate``).

Videos (``Adapter.video_tokens``): the tokens one video of F frames of W x H becomes, from the video processor
built from ``video_preprocessor_config.json`` (else ``preprocessor_config.json``); F is the frames the model
sees (the processor's own frame sampling is off: ``--frames`` is the sampled count).

* :func:`merged_video_patches` — Qwen2-VL / Qwen2.5-VL: frames padded to a multiple of the temporal patch,
  each resized like an image within the video pixel bounds; tokens = patches / merge^2.
* :func:`video_patches` — Qwen3-VL / Qwen3.5 / GLM-4.xV: the video processor's own patch count (theirs resizes
  all frames within the pixel bounds, per-frame cap included, as their resize does) / merge^2.
* :func:`pooled_frames` — LLaVA-OneVision: each frame's patch grid pooled 2 x 2, one newline per video.
* :func:`pooled_patches_per_frame` — Gemma 4: each frame pooled like an image (:func:`pooled_patches`), x F.
"""

from __future__ import annotations

import math
from fractions import Fraction

__all__ = ["merged_patches", "fixed_per_image", "tiles", "covering_tiles", "smart_resized_tiles", "split_tiles",
           "merged_grid", "pixtral_patch_size", "pooled_patches", "anyres", "image_processor_of",
           "processor_call_defaults", "merged_video_patches", "video_patches", "pooled_frames",
           "pooled_patches_per_frame"]


def image_processor_of(name_or_path: str):
    """The image processor of a model directory or hub id, from its preprocessor_config.json only."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(name_or_path)


def processor_call_defaults(config) -> dict:
    """What the family's transformers processor hands its image processor on every call: the processor class's
    ``images_kwargs`` (InternVL's and Aya Vision's ``crop_to_patches=True``, Gemma 3's ``do_pan_and_scan=False``,
    LLaVA-NeXT's ``do_pad=True``, ...). They override the values in preprocessor_config.json, so an image processor
    called on its own (the config-only count) must be given them too; ``return_tensors`` is left out."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = PROCESSOR_MAPPING_NAMES.get(getattr(config, "model_type", None))
    if not isinstance(name, str):
        return {}
    for model_type, processor in PROCESSOR_MAPPING_NAMES.items():
        if processor == name:
            found = _class_attribute(model_type, name, "images_kwargs")
            if found is not None:
                return {key: value for key, value in found.items() if key != "return_tensors"}
    return {}


def _class_attribute(model_type: str, class_name: str, attribute: str) -> dict | None:
    """``attribute`` of the processor class in transformers/models/<module>/processing_<module>.py; None where the
    module does not define the class. Where the module cannot be imported (PixtralProcessor's needs torchvision),
    the literal assigned in the class body is read from the source instead."""
    import ast
    import importlib
    import importlib.util

    from transformers.models.auto.configuration_auto import model_type_to_module_name

    module = model_type_to_module_name(model_type)
    path = f"transformers.models.{module}.processing_{module}"
    try:
        spec = importlib.util.find_spec(path)
    except ModuleNotFoundError:
        return None
    if spec is None or spec.origin is None:
        return None
    try:
        found = getattr(importlib.import_module(path), class_name, None)
        return None if found is None else dict(getattr(found, attribute, None) or {})
    except ImportError:
        tree = ast.parse(open(spec.origin, encoding="utf-8").read())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for statement in node.body:
                if isinstance(statement, ast.Assign) and any(getattr(t, "id", None) == attribute
                                                             for t in statement.targets):
                    return dict(ast.literal_eval(statement.value))
            return {}
    return None


def _side(value) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def merged_patches(config, images, width: int, height: int, count: int = 1) -> int:
    merge = getattr(images, "merge_size", None) or config.vision_config.spatial_merge_size
    return int(images.get_number_of_image_patches(height, width, {})) // merge ** 2


def fixed_per_image(config, images, width: int, height: int, count: int = 1) -> int:
    per_image = getattr(config, "mm_tokens_per_image", None)
    if per_image is not None:
        return int(per_image)
    from vtwcli.measure.flops import tokens_per_image

    return tokens_per_image(config)


def tiles(config, images, width: int, height: int, count: int = 1) -> int:
    vision = config.vision_config
    grid = _side(vision.image_size) // _side(vision.patch_size)
    factor = getattr(config, "downsample_factor", None)  # Aya Vision: pixel shuffle by an integer factor
    per_tile = (grid // factor) ** 2 if factor else int(grid ** 2 * config.downsample_ratio ** 2)
    return int(images.get_number_of_image_patches(height, width, {})) * per_tile


def covering_tiles(config, images, width: int, height: int, count: int = 1) -> int:
    """Ovis2: with ``crop_to_patches``, the image cut into the fewest tiles that cover 90 % of it
    (``use_covering_area_grid``, else the grid closest to its aspect ratio) plus, where there are several, the
    whole image first; ceil(patches per side / hidden_stride)^2 <IMG_ATOM> tokens per view. The visual indicator
    tokens around them (start, grid, column, row, end) are kept tokens, not counted here."""
    from transformers.models.ovis2.image_processing_pil_ovis2 import (get_min_tile_covering_grid,
                                                                      get_optimal_tiled_canvas)

    vision = config.vision_config
    per_view = math.ceil(_side(vision.image_size) // _side(vision.patch_size) / vision.hidden_stride) ** 2
    if not images.crop_to_patches or images.max_patches <= 1:
        return per_view
    tile = images.size["height"], images.size["width"]
    if images.use_covering_area_grid:
        columns, rows = get_min_tile_covering_grid((height, width), tile[0], images.max_patches)
    else:
        columns, rows = get_optimal_tiled_canvas((height, width), tile, images.min_patches, images.max_patches)
    return per_view * (1 + rows * columns if rows * columns > 1 else 1)


def smart_resized_tiles(config, images, width: int, height: int, count: int = 1) -> int:
    """LFM2-VL: an image too big for one view (its sides rounded to whole patch x downsample blocks exceed
    ``max_image_tokens`` x ``max_pixels_tolerance`` tokens) and splitting on: the grid of ``min_tiles`` ..
    ``max_tiles`` tiles closest to its aspect ratio, (tile_size / patch / factor)^2 tokens each, plus (with
    ``use_thumbnail``) the whole image smart-resized; any other image: smart-resized alone (sides multiples of
    patch x factor, within ``min_image_tokens`` .. ``max_image_tokens`` tokens), one token per block."""
    patch, factor = images.encoder_patch_size, images.downsample_factor
    resized_width, resized_height = images.smart_resize(height, width, factor, images.min_image_tokens,
                                                        images.max_image_tokens, patch)
    whole = math.ceil(resized_height // patch / factor) * math.ceil(resized_width // patch / factor)
    if not images.do_image_splitting or images.min_tiles == images.max_tiles == 1:
        return whole
    block = patch * factor
    rounded = [max(patch, round(side / block) * block) for side in (height, width)]
    if rounded[0] * rounded[1] <= images.max_image_tokens * block ** 2 * images.max_pixels_tolerance:
        return whole  # small enough for one view
    columns, rows = _lfm2_grid(images, width, height)
    if rows == columns == 1:  # one tile: the processor counts the smart-resized image
        return whole
    return rows * columns * math.ceil(images.tile_size // patch / factor) ** 2 + (whole if images.use_thumbnail else 0)


def _lfm2_grid(images, width: int, height: int) -> tuple[int, int]:
    """Lfm2VlImageProcessor's grid (columns, rows): of the grids of min_tiles .. max_tiles tiles (fewest tiles
    first), the closest to the image's aspect ratio; on a tie, the later one where the image covers more than
    half of its area."""
    low, high = images.min_tiles, images.max_tiles
    # built as the image processor builds it (a set, then sorted by area), so that ties come in its order
    grids = set([(columns, rows) for n in range(low, high + 1) for columns in range(1, n + 1)
                 for rows in range(1, n + 1) if low <= columns * rows <= high])
    grids = sorted(grids, key=lambda grid: grid[0] * grid[1])
    best, best_diff = (1, 1), float("inf")
    for columns, rows in grids:
        diff = abs(width / height - columns / rows)
        if diff < best_diff:
            best, best_diff = (columns, rows), diff
        elif diff == best_diff and width * height > 0.5 * images.tile_size ** 2 * columns * rows:
            best = (columns, rows)
    return best


def split_tiles(config, images, width: int, height: int, count: int = 1) -> int:
    perceiver = getattr(config, "perceiver_config", None)
    if perceiver is not None:  # Idefics2: the resampler's latents for the whole image (and each of its 4 crops)
        return perceiver.resampler_n_latents * (5 if images.do_image_splitting else 1)
    vision = config.vision_config
    per_tile = (vision.image_size // vision.patch_size) ** 2 // config.scale_factor ** 2
    count, _, _ = images.get_number_of_image_patches(height, width, {})
    return max(int(count), 1) * per_tile  # no split: the image alone


def pixtral_patch_size(config) -> dict:
    """What PixtralProcessor hands its image processor on every call: patch_size x spatial_merge_size, so both
    sides of the resized image are whole merged patches."""
    unit = config.vision_config.patch_size * config.spatial_merge_size
    return {"patch_size": {"height": unit, "width": unit}}


def merged_grid(config, images, width: int, height: int, count: int = 1) -> int:
    import numpy as np
    from transformers.models.pixtral.image_processing_pil_pixtral import get_resize_output_image_size

    longest = images.size["longest_edge"]
    patch = images.patch_size
    picture = np.broadcast_to(np.uint8(0), (height, width, 3))  # only its shape is read
    resized_height, resized_width = get_resize_output_image_size(
        picture, size=(longest, longest), patch_size=(patch["height"], patch["width"]),
        input_data_format="channels_last")
    unit = config.vision_config.patch_size * config.spatial_merge_size
    return (resized_height // unit) * (resized_width // unit)


def pooled_patches(config, images, width: int, height: int, count: int = 1) -> int:
    from transformers.models.gemma4.image_processing_pil_gemma4 import get_aspect_ratio_preserving_size

    patch, kernel = images.patch_size, images.pooling_kernel_size
    if images.do_resize:
        height, width = get_aspect_ratio_preserving_size(height, width, patch, images.max_soft_tokens * kernel ** 2,
                                                         kernel)
    return (height // patch) * (width // patch) // kernel ** 2


def pooled_patches_per_frame(config, videos, frames: int, width: int, height: int) -> int:
    """Gemma 4: every frame resized and pooled as :func:`pooled_patches` does an image (the video processor's
    own patch size, pooling kernel and ``max_soft_tokens``), F frames."""
    return frames * pooled_patches(config, videos, width, height)


def anyres(config, images, width: int, height: int, count: int = 1) -> int:
    """Base view + the pinpoint grid closest to the image, with its padding rows/columns removed and one
    newline feature per row of patches (as LLaVA-NeXT packs its features). OneVision with several images
    in a prompt (``count`` > 1) gives each only its base view and one newline feature."""
    from transformers.image_processing_utils import select_best_resolution

    from vtwcli.measure.flops import tokens_per_image

    aspect = getattr(config, "vision_aspect_ratio", None)
    if count > 1 and isinstance(aspect, str) and aspect.startswith("anyres_max_"):
        return tokens_per_image(config) + 1
    vision = config.vision_config
    side = _side(vision.image_size)
    grid = side // _side(vision.patch_size)
    base = tokens_per_image(config)
    rate = getattr(config, "downsample_rate", None)  # Granite4-Vision: each view's grid shrunk by this fraction
    if rate is not None:
        base, grid = base - grid ** 2 + int(grid * Fraction(rate)) ** 2, int(grid * Fraction(rate))
    best_height, best_width = select_best_resolution((height, width), config.image_grid_pinpoints)
    rows, cols = grid * (best_height // side), grid * (best_width // side)
    if width / height > cols / rows:  # wider than the grid: padding rows above and below
        rows -= 2 * ((rows - int(round(height * (cols / width), 7))) // 2)
    else:
        cols -= 2 * ((cols - int(round(width * (rows / height), 7))) // 2)
    newlines = rows
    if isinstance(aspect, str) and aspect.startswith("anyres_max_"):  # OneVision pools big grids down
        ratio = math.sqrt(rows * cols / (int(aspect.removeprefix("anyres_max_")) * grid ** 2))
        if ratio > 1.1:
            rows, cols = int(rows // ratio), int(cols // ratio)
            newlines = rows
    return rows * cols + newlines + base


# ---------------------------------------------------------------------------------------------------- videos
def merged_video_patches(config, videos, frames: int, width: int, height: int) -> int:
    """Qwen2-VL / Qwen2.5-VL: ``frames`` padded to a multiple of ``temporal_patch_size`` (the processor repeats the
    last frame), every frame resized to a multiple of patch x merge within the video processor's pixel bounds;
    with ``cap_pixels_per_frame`` each frame gets at most an even share of ``max_video_tokens`` tokens' worth of
    pixels (floored at 1.05 x the minimum), as the processor's resize does. Tokens = patches / merge^2."""
    shortest, longest = videos.size.shortest_edge, videos.size.longest_edge
    if getattr(videos, "cap_pixels_per_frame", None):
        factor = videos.patch_size * videos.merge_size
        budget = int(videos.max_video_tokens * factor * factor * 0.9)
        longest = max(min(longest, budget * videos.temporal_patch_size // frames), int(shortest * 1.05))
    size = {"shortest_edge": shortest, "longest_edge": longest}
    return int(videos.get_num_of_video_patches(frames, height, width, {"size": size})) // videos.merge_size ** 2


def video_patches(config, videos, frames: int, width: int, height: int) -> int:
    """Qwen3-VL / Qwen3.5 / GLM-4.1V, 4.5V, 4.6V: the video processor's ``get_num_of_video_patches``, which in these
    processors resizes as their ``resize`` does (the pixel bounds hold for all frames together; Qwen3-VL's
    ``cap_pixels_per_frame`` included; frames padded to a multiple of the temporal patch), / merge^2. Each
    temporal patch becomes its own vision block in the prompt (Qwen3-VL: a timestamp and <|vision_start|> ...
    <|vision_end|>; GLM: <|begin_of_image|> ... <|end_of_image|> and a timestamp): text tokens, not counted here.
    Fewer frames than the temporal patch are refused by the processor (ValueError)."""
    return int(videos.get_num_of_video_patches(frames, height, width, {})) // videos.merge_size ** 2


def pooled_frames(config, videos, frames: int, width: int, height: int) -> int:
    """LLaVA-OneVision: every frame resized to the vision tower's square, its patch grid pooled to half each side
    (rounded up), all frames' features then one newline feature per video."""
    vision = config.vision_config
    grid = _side(vision.image_size) // _side(vision.patch_size)
    return frames * math.ceil(grid / 2) ** 2 + 1
