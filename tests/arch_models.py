"""Tiny randomly initialised models of every supported family, with locally built processors (no hub).

Each family is a ``Family``: how to build the model, its processor, and a batch whose rows differ (lengths,
images of different sizes so that anyres / dynamic-resolution families give rows different numbers of
vision tokens, two images in one row). The exactness suite in test_architectures.py runs on all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image

def _has_torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or a build that does not match the installed torch
        return False
    return True


# The Qwen2-VL / Qwen3-VL, GLM-4V, LLaVA-OneVision, InternVL and Gemma 4 processors need a video processor,
# which needs torchvision, and the Pixtral, LFM2-VL and Cohere2 Vision ones need it outright: with it the real
# processors are tested; without it (CPU torch here) stand-ins that prepare the same inputs
# (tests/test_processor_standins.py compares them where torchvision imports).
HAS_TORCHVISION = _has_torchvision()
VOCAB = 128
PAD, BOS, EOS, UNK = 0, 1, 2, 3
WORDS = ["USER", "ASSISTANT", ":", "?", ".", "what", "color", "is", "the", "red", "blue", "green", "how", "many",
         "a", "b", "c", "d", "answer", "with", "option's", "letter", "user", "assistant", "model", "describe", "this",
         "image", "and", "that", "video"]


def word_tokenizer(specials: dict[str, str], extra_special: dict[str, str] | None = None):
    """A word-level fast tokenizer: pad/bos/eos/unk, the given special tokens (as added tokens), words."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special_tokens = list(specials.values())
    vocab_words = ["<pad>", "<s>", "</s>", "<unk>"] + special_tokens + WORDS
    vocab_words += [f"w{i}" for i in range(VOCAB - len(vocab_words))]
    vocab = {w: i for i, w in enumerate(vocab_words[:VOCAB])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", padding_side="left",
                                        extra_special_tokens=dict(extra_special or specials))
    return tokenizer


def token_id(specials: dict[str, str], name: str) -> int:
    return 4 + list(specials).index(name)


def image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def _finish(model, suppress: list[int]):
    model.config.pad_token_id = PAD
    model.generation_config.pad_token_id = PAD
    model.generation_config.bos_token_id = BOS
    model.generation_config.eos_token_id = None  # random weights: never stop early, compare whole runs
    # a generated vision token would be read as one by the no-cache references
    model.generation_config.suppress_tokens = suppress
    return model.eval()


def _text(**overrides) -> dict:
    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=512, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    text.update(overrides)
    return text


@dataclass
class Family:
    name: str
    architecture: str
    build: Callable[[int, str, int], torch.nn.Module]  # (num_layers, attn, seed) -> model in eval mode
    processor: Callable[[], object]
    # The test batch: per row, the prompt text (with the processor's placeholders) and its images.
    rows: Callable[[object], list[tuple[str, list]]]
    # Ids the references treat as vision tokens (what VTW withdraws).
    vision_ids: Callable[[object], list[int]]
    # Bidirectional attention inside image blocks in layers < K (Gemma 3): block id per token or None.
    image_blocks: Callable[[torch.Tensor, object], torch.Tensor | None] = lambda ids, config: None
    # True where those blocks hold text too and stay bidirectional among the kept tokens in layers >= K
    # (PaliGemma's prefix-LM); False where they are image blocks only (Gemma 3), withdrawn with the images.
    blocks_after_withdrawal: bool = False
    # token_type_ids of generated tokens (PaliGemma's generate() marks them 1: the causal suffix)
    generated_token_type: int = 0
    # DeepStack (Qwen3-VL): from the keyword arguments the language model receives in an ordinary forward,
    # {decoder layer whose input is changed: (positions (B, S) bool, features added there (n, d))}.
    injections: Callable[[dict], dict] = lambda kwargs: {}
    # Rows for the beam-search tests where upstream beam search cannot take `rows` (None: `rows`), and why.
    beam_rows: Callable[[object], list[tuple[str, list]]] | None = None
    beam_rows_reason: str = ""
    # The layer types whose attention is bidirectional inside image blocks (Gemma 4: sliding layers only);
    # None: every layer (Gemma 3).
    image_block_layer_types: tuple[str, ...] | None = None
    notes: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# LLaVA-NeXT: anyres (a base 16x16 view + a grid of 16x16 crops, unpadded, with image-newline features)

LLAVA_SPECIALS = {"image_token": "<image>"}
LLAVA_IMAGE = token_id(LLAVA_SPECIALS, "image_token")
LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'video' %}"
    "<video>\n{% else %}{{ item['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
PINPOINTS = [[16, 32], [32, 16], [32, 32]]


def _clip(image_size=16):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                            image_size=image_size, patch_size=4, projection_dim=32)


def tiny_llava_next(num_layers=4, attn="sdpa", seed=0):
    from transformers import LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    config = LlavaNextConfig(vision_config=_clip(), text_config=LlamaConfig(**_text(num_hidden_layers=num_layers)),
                             image_token_id=LLAVA_IMAGE, image_grid_pinpoints=PINPOINTS,
                             vision_feature_select_strategy="default", vision_feature_layer=-1)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(LlavaNextForConditionalGeneration(config), [LLAVA_IMAGE])


def llava_next_processor():
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    images = LlavaNextImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                        image_grid_pinpoints=PINPOINTS)
    return LlavaNextProcessor(image_processor=images, tokenizer=word_tokenizer(LLAVA_SPECIALS), patch_size=4,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=LLAVA_TEMPLATE)


def llava_rows(processor):
    return [("USER: what color <image>\nthe <image>\nis this ? \nASSISTANT:", [image(40, 20, 1), image(16, 16, 2)]),
            ("USER: <image>\nhow many ?\nASSISTANT:", [image(20, 44, 3)])]


# ---------------------------------------------------------------------------------------------------------
# Qwen2-VL / Qwen2.5-VL: dynamic resolution, M-RoPE (3-D positions), vision start/end kept, pads withdrawn

QWEN_SPECIALS = {"vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>",
                 "image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "im_start": "<|im_start|>",
                 "im_end": "<|im_end|>"}
QWEN_IMAGE, QWEN_VIDEO = token_id(QWEN_SPECIALS, "image_token"), token_id(QWEN_SPECIALS, "video_token")
QWEN_START, QWEN_END = token_id(QWEN_SPECIALS, "vision_start_token"), token_id(QWEN_SPECIALS, "vision_end_token")
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% elif item['type'] == 'video' %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% else %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_qwen2_vl(num_layers=4, attn="sdpa", seed=0, version="2"):
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)

    text = _text(num_hidden_layers=num_layers,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]})
    ids = dict(image_token_id=QWEN_IMAGE, video_token_id=QWEN_VIDEO, vision_start_token_id=QWEN_START,
               vision_end_token_id=QWEN_END)
    if version == "2":
        vision = dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=4,
                      spatial_merge_size=2, temporal_patch_size=2)
        config, cls = Qwen2VLConfig(text_config=text, vision_config=vision, **ids), Qwen2VLForConditionalGeneration
    else:
        vision = dict(depth=2, hidden_size=16, out_hidden_size=32, intermediate_size=32, num_heads=2, patch_size=4,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=16, fullatt_block_indexes=[1])
        config, cls = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids), Qwen2_5_VLForConditionalGeneration
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(cls(config), [QWEN_IMAGE, QWEN_VIDEO, QWEN_START, QWEN_END])


QWEN_SIZE = {"shortest_edge": 8 * 8, "longest_edge": 32 * 32}  # pixels per image (Qwen3-VL videos: all frames)


def qwen_processor(version="2"):
    """The family's processor where it can be built (it needs torchvision for its video processor), else
    ``QwenInputs`` / ``Qwen3VLInputs`` (Qwen3-VL, Qwen3.5), which prepare the same inputs from the image
    processor and the tokenizer (tests/test_processor_standins.py compares them)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    images = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2, size=QWEN_SIZE)
    tokenizer = word_tokenizer(QWEN_SPECIALS)
    if not HAS_TORCHVISION:  # the real processor needs its video processor, which needs torchvision
        return (Qwen3VLInputs if version == "3" else QwenInputs)(images, tokenizer)
    if version == "3":
        from transformers import Qwen3VLProcessor
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        # cap_pixels_per_frame: the announced default (same sizes here), without the warning
        videos = Qwen3VLVideoProcessor(patch_size=4, merge_size=2, temporal_patch_size=2, size=QWEN_SIZE,
                                       cap_pixels_per_frame=True)
        return Qwen3VLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=videos,
                                chat_template=QWEN_TEMPLATE)
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    videos = Qwen2VLVideoProcessor(patch_size=4, merge_size=2, temporal_patch_size=2, size=QWEN_SIZE)
    cls = Qwen2VLProcessor if version == "2" else Qwen2_5_VLProcessor
    return cls(image_processor=images, tokenizer=tokenizer, video_processor=videos, chat_template=QWEN_TEMPLATE)


def video_count(videos) -> int:
    """Stand-ins take ``videos=`` as a count per row (tests) or as the videos themselves (frames; vtwcli)."""
    return sum(v if isinstance(v, int) else 1 for v in videos)


class ShimProcessor:
    """Stands in for a family processor that needs torchvision: a chat template, a tokenizer, and __call__
    returning a BatchFeature like the real one (subclasses prepare the inputs)."""

    chat_template: str = ""

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False, **kwargs):
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=tokenize,
                                                  add_generation_prompt=add_generation_prompt, **kwargs)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)


QWEN_VIDEO_GRID = (2, 4, 4)  # (t, h, w) patches of the tiny video: 2 * 4 * 4 / merge 2**2 = 8 video tokens
# Frames without metadata: the real processors take 24 fps for their timestamps, and so do the stand-ins (which
# tests/test_processor_standins.py compares with them so). vtwcli hands the real processors metadata at their
# sampling rate (2 fps, vtwcli.measure.config_video.frames_as_given; stand-ins take none): timestamps are text
# tokens, so only the text count differs, which `vtw profile` fills to --text-tokens either way.
VIDEO_FPS = 24


class QwenInputs(ShimProcessor):
    """What Qwen2VLProcessor does for images, spelled out: pads expanded per image grid, mm_token_type_ids.
    Videos (``videos=`` a count per row, or the videos: 4 frames each) get random patches of grid
    QWEN_VIDEO_GRID."""

    chat_template = QWEN_TEMPLATE
    image_token, image_id, video_id = "<|image_pad|>", QWEN_IMAGE, QWEN_VIDEO

    def __init__(self, image_processor, tokenizer):
        self.image_processor, self.tokenizer = image_processor, tokenizer

    def __call__(self, text, images=None, videos=None, padding=True, return_tensors="pt"):
        flat = [img for row in images or [] for img in row]
        out = {}
        texts = list(text)
        if flat:
            vision = self.image_processor(images=flat, return_tensors="pt")
            out.update(pixel_values=vision["pixel_values"], image_grid_thw=vision["image_grid_thw"])
            counts = iter((vision["image_grid_thw"].prod(-1) // 4).tolist())
            texts = [_expand(t, self.image_token, counts) for t in texts]
        if videos:
            t, h, w = QWEN_VIDEO_GRID
            total = video_count(videos)
            generator = torch.Generator().manual_seed(7)
            out["pixel_values_videos"] = torch.randn(total * t * h * w, 3 * 2 * 4 * 4, generator=generator)
            out["video_grid_thw"] = torch.tensor([list(QWEN_VIDEO_GRID)] * total)
            texts = [self.expand_videos(x, total) for x in texts]
        encoded = self.tokenizer(texts, padding=padding, return_tensors=return_tensors)
        ids = encoded["input_ids"]
        return _features({"input_ids": ids, "attention_mask": encoded["attention_mask"],
                          "mm_token_type_ids": self.token_types(ids), **out})

    def token_types(self, ids: torch.Tensor) -> torch.Tensor:
        types = torch.zeros_like(ids)
        types[ids == self.image_id] = 1
        types[ids == self.video_id] = 2
        return types

    def expand_videos(self, text: str, total: int) -> str:
        t, h, w = QWEN_VIDEO_GRID
        return _expand(text, "<|video_pad|>", iter([t * h * w // 4] * total))


class Qwen3VLInputs(QwenInputs):
    """Qwen3VLProcessor's video layout (Qwen3-VL, Qwen3.5): <|video_pad|> (the template's <|vision_start|> /
    <|vision_end|> stay around it) becomes, per temporal patch of frames, its timestamp "<0.1 seconds>" (the
    mean of the patch's two frame times at VIDEO_FPS) and its own <|vision_start|> <|video_pad|> x n
    <|vision_end|> block."""

    def expand_videos(self, text: str, total: int) -> str:
        t, h, w = QWEN_VIDEO_GRID
        seconds = [(frame / VIDEO_FPS + (frame + 1) / VIDEO_FPS) / 2 for frame in range(0, 2 * t, 2)]
        frames = "".join(f"<{second:.1f} seconds><|vision_start|>" + "<|video_pad|>" * (h * w // 4) + "<|vision_end|>"
                         for second in seconds)
        return text.replace("<|video_pad|>", frames)


def _features(data: dict):
    from transformers import BatchFeature

    return BatchFeature(data=data)


def _expand(text: str, token: str, counts) -> str:
    parts = text.split(token)
    return parts[0] + "".join(token * next(counts) + part for part in parts[1:])


def torch_pixels(img: Image.Image) -> torch.Tensor:
    """uint8 (3, H, W), as the torchvision image processors read a PIL image."""
    return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)


def torch_resize(pixels: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """What the torchvision image processors do to uint8 (..., 3, H, W) pixels on the CPU: antialiased
    resampling of the uint8 values (torch's own kernel, the one torchvision calls), nothing at the same size."""
    if tuple(pixels.shape[-2:]) == (height, width):
        return pixels
    flat = pixels.reshape(-1, *pixels.shape[-3:])
    resized = torch.nn.functional.interpolate(flat, size=[height, width], mode=mode, align_corners=False,
                                              antialias=True)
    return resized.reshape(*pixels.shape[:-2], height, width)


def torch_normalize(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """The torchvision backend's rescale (1 / 255) and normalize, fused as it fuses them, in float32."""
    mean, std = (torch.tensor(values) * (1.0 / (1 / 255)) for values in (mean, std))
    return (pixels.to(torch.float32) - mean[:, None, None]) / std[:, None, None]


def qwen_rows(processor):
    pad = "<|vision_start|><|image_pad|><|vision_end|>"
    return [(f"<|im_start|>user\nwhat color {pad} the {pad} is this ?<|im_end|>\n<|im_start|>assistant\n",
             [image(40, 20, 1), image(16, 16, 2)]),
            (f"<|im_start|>user\n{pad}how many ?<|im_end|>\n<|im_start|>assistant\n", [image(20, 44, 3)])]


# ---------------------------------------------------------------------------------------------------------
# Gemma 3: sliding-window and full layers (own RoPE each), bidirectional attention inside image blocks

GEMMA_SPECIALS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>",
                  "start_turn": "<start_of_turn>", "end_turn": "<end_of_turn>"}
GEMMA_IMAGE, GEMMA_BOI = token_id(GEMMA_SPECIALS, "image_token"), token_id(GEMMA_SPECIALS, "boi_token")
GEMMA_EOI = token_id(GEMMA_SPECIALS, "eoi_token")
GEMMA_WINDOW = 6
GEMMA_TEMPLATE = (
    "{% for message in messages %}<start_of_turn>{{ message['role'] }}\n{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>{% else %}{{ item['text'] }}{% endif %}{% endfor %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def tiny_gemma3(num_layers=4, attn="sdpa", seed=0):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)]
    text = Gemma3TextConfig(**_text(num_hidden_layers=num_layers, head_dim=8, sliding_window=GEMMA_WINDOW,
                                    layer_types=types, query_pre_attn_scalar=8, final_logit_softcapping=None,
                                    attn_logit_softcapping=None,
                                    rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                                     "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}))
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                image_size=16, patch_size=4)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=GEMMA_IMAGE,
                          boi_token_index=GEMMA_BOI, eoi_token_index=GEMMA_EOI)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    # transformers initialises the image projection to zeros: random ones, so image features are not all zero
    # (else every check that image content reaches the text would pass vacuously)
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.5)
    return _finish(model, [GEMMA_IMAGE, GEMMA_BOI, GEMMA_EOI])


def gemma3_processor():
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    images = Gemma3ImageProcessorPil(size={"height": 16, "width": 16})
    return Gemma3Processor(image_processor=images, tokenizer=word_tokenizer(GEMMA_SPECIALS), image_seq_length=4,
                           chat_template=GEMMA_TEMPLATE)


def gemma3_rows(processor):
    return [("<start_of_turn>user\nwhat color <start_of_image> the <start_of_image> is this ?<end_of_turn>\n"
             "<start_of_turn>model\n", [image(40, 20, 1), image(16, 16, 2)]),
            ("<start_of_turn>user\n<start_of_image>how many ?<end_of_turn>\n<start_of_turn>model\n", [image(20, 44, 3)])]


def gemma3_blocks(ids: torch.Tensor, config) -> torch.Tensor:
    """Image block id per token (-1 outside): contiguous runs of image soft tokens."""
    image = ids == config.image_token_id
    starts = image & ~torch.cat([torch.zeros_like(image[..., :1]), image[..., :-1]], dim=-1)
    return torch.where(image, starts.long().cumsum(-1) - 1, torch.full_like(ids, -1))


# ---------------------------------------------------------------------------------------------------------
# LLaVA-OneVision: anyres images (SigLIP, Qwen2 LM) and videos (frames pooled) in one model

OV_SPECIALS = {"image_token": "<image>", "video_token": "<video>"}
OV_IMAGE, OV_VIDEO = token_id(OV_SPECIALS, "image_token"), token_id(OV_SPECIALS, "video_token")


def _siglip(image_size=16):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                              image_size=image_size, patch_size=4)


def tiny_llava_onevision(num_layers=4, attn="sdpa", seed=0):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config

    config = LlavaOnevisionConfig(vision_config=_siglip(), text_config=Qwen2Config(**_text(num_hidden_layers=num_layers)),
                                  image_token_index=OV_IMAGE, video_token_index=OV_VIDEO, image_grid_pinpoints=PINPOINTS,
                                  vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(LlavaOnevisionForConditionalGeneration(config), [OV_IMAGE, OV_VIDEO])


class FeatureCountInputs(ShimProcessor):
    """Inputs for families whose processor needs torchvision (a video processor): the image processor's
    pixels, and each placeholder expanded to as many tokens as the model makes features for it."""

    image_kwargs: dict = {}  # what the real processor hands its image processor on each call

    def __init__(self, image_processor, tokenizer, build_model, image_token: str, video_token: str | None = None,
                 wrap: Callable[[str, int], str] | None = None, chat_template: str = ""):
        self.image_processor, self.tokenizer, self.chat_template = image_processor, tokenizer, chat_template
        self.model = build_model(1, "sdpa", 0)  # the vision side decides the counts; one text layer suffices
        self.image_token, self.video_token = image_token, video_token
        self.wrap = wrap or (lambda token, count: token * count)

    @torch.no_grad()
    def __call__(self, text, images=None, videos=None, padding=True, return_tensors="pt"):
        out, texts = {}, list(text)
        flat = [img for row in images or [] for img in row]
        if flat:
            vision = dict(self.image_processor(images=[list(row) for row in images], return_tensors="pt",
                                               **self.image_kwargs))
            vision.pop("num_patches", None)
            out.update(vision)
            counts = iter(self._image_counts(vision))
            texts = [_expand_with(t, self.image_token, lambda: self.wrap(self.image_token, next(counts))) for t in texts]
        if videos:
            generator = torch.Generator().manual_seed(7)
            size = self.model.config.vision_config.image_size
            out["pixel_values_videos"] = torch.randn(video_count(videos), 2, 3, size, size, generator=generator)
            features = self.model.model.get_video_features(pixel_values_videos=out["pixel_values_videos"]).pooler_output
            per_video = features.shape[1] if isinstance(features, torch.Tensor) and features.dim() == 3 else \
                features.shape[0] // video_count(videos)
            texts = [_expand_with(t, self.video_token, lambda: self.video_token * per_video) for t in texts]
        encoded = self.tokenizer(texts, padding=padding, return_tensors=return_tensors)
        return _features({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], **out})

    def _image_counts(self, vision: dict) -> list[int]:
        kwargs = {k: v for k, v in vision.items() if k in ("pixel_values", "image_sizes", "batch_num_images")}
        features = self.model.model.get_image_features(**kwargs).pooler_output
        return [len(f) for f in features]


def _expand_with(text: str, token: str, make) -> str:
    parts = text.split(token)
    return parts[0] + "".join(make() + part for part in parts[1:])


def llava_onevision_processor():
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import \
        LlavaOnevisionImageProcessorPil

    images = LlavaOnevisionImageProcessorPil(size={"height": 16, "width": 16}, image_grid_pinpoints=PINPOINTS)
    if HAS_TORCHVISION:
        from transformers import LlavaOnevisionProcessor
        from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

        return LlavaOnevisionProcessor(image_processor=images, tokenizer=word_tokenizer(OV_SPECIALS),
                                       video_processor=LlavaOnevisionVideoProcessor(size={"height": 16, "width": 16}),
                                       num_image_tokens=16, vision_feature_select_strategy="full",
                                       chat_template=LLAVA_TEMPLATE)
    return FeatureCountInputs(images, word_tokenizer(OV_SPECIALS), tiny_llava_onevision, "<image>", "<video>",
                              chat_template=LLAVA_TEMPLATE)


# ---------------------------------------------------------------------------------------------------------
# Mistral3 (Pixtral vision): variable image sizes, [IMG] rows closed by [IMG_BREAK], [IMG_END] last

PIXTRAL_SPECIALS = {"image_token": "[IMG]", "image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]",
                    "inst": "[INST]", "inst_end": "[/INST]"}
PIXTRAL_IMAGE = token_id(PIXTRAL_SPECIALS, "image_token")
PIXTRAL_BREAK, PIXTRAL_END = token_id(PIXTRAL_SPECIALS, "image_break_token"), token_id(PIXTRAL_SPECIALS, "image_end_token")
PIXTRAL_TEMPLATE = (
    "{% for message in messages %}[INST]{% for item in message['content'] %}{% if item['type'] == 'image' %}[IMG]"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}[/INST]{% endfor %}"
)


def tiny_mistral3(num_layers=4, attn="sdpa", seed=0):
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig

    vision = PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                 image_size=32, patch_size=4, head_dim=8)
    config = Mistral3Config(vision_config=vision, text_config=MistralConfig(**_text(num_hidden_layers=num_layers,
                                                                                    head_dim=8)),
                            image_token_index=PIXTRAL_IMAGE, spatial_merge_size=2, vision_feature_layer=-1)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(Mistral3ForConditionalGeneration(config), [PIXTRAL_IMAGE, PIXTRAL_BREAK, PIXTRAL_END])


class PixtralInputs(FeatureCountInputs):
    """What PixtralProcessor does (it needs torchvision): the image processor resizes each side to a multiple of
    patch size x spatial merge; per image, rows of [IMG] x width closed by [IMG_BREAK], the last row closed by
    [IMG_END]; width/height in merged patches of the resized image."""

    unit = 4 * 2  # patch size x spatial merge
    image_kwargs = {"patch_size": {"height": unit, "width": unit}}

    def __call__(self, text, images=None, **kwargs):
        flat = [img for row in images or [] for img in row]
        sizes = iter(self.image_processor(images=[list(row) for row in images], return_tensors="pt",
                                          **self.image_kwargs)["image_sizes"].tolist() if flat else [])
        unit = self.unit

        def layout(token, count):
            height, width = next(sizes)
            rows = ["[IMG]" * (width // unit) + "[IMG_BREAK]" for _ in range(height // unit)]
            return "".join(rows)[: -len("[IMG_BREAK]")] + "[IMG_END]"

        self.wrap = layout
        return super().__call__(text, images=images, **kwargs)

    def _image_counts(self, vision: dict) -> list[int]:
        return [0] * len(vision["image_sizes"])  # the layout above decides


def mistral3_processor():
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    images = PixtralImageProcessorPil(size={"longest_edge": 32}, patch_size={"height": 4, "width": 4})
    try:
        from transformers import PixtralProcessor

        return PixtralProcessor(image_processor=images, tokenizer=word_tokenizer(PIXTRAL_SPECIALS), patch_size=4,
                                spatial_merge_size=2, chat_template=PIXTRAL_TEMPLATE)
    except ImportError:  # PixtralProcessor requires torchvision
        return PixtralInputs(images, word_tokenizer(PIXTRAL_SPECIALS), tiny_mistral3, "[IMG]",
                             chat_template=PIXTRAL_TEMPLATE)


def mistral3_rows(processor):
    return [("[INST]what color [IMG] the [IMG] is this ?[/INST]", [image(40, 20, 1), image(16, 16, 2)]),
            ("[INST][IMG]how many ?[/INST]", [image(20, 44, 3)])]


# ---------------------------------------------------------------------------------------------------------
# InternVL: <img> + <IMG_CONTEXT> x (tokens per tile x tiles) + </img>, pixel-shuffle MLP connector

INTERNVL_SPECIALS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                     "video_token": "<video>", "im_start": "<|im_start|>", "im_end": "<|im_end|>"}
INTERNVL_TEMPLATE = QWEN_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>\n")
INTERNVL_IMAGE = token_id(INTERNVL_SPECIALS, "context_image_token")
INTERNVL_START, INTERNVL_END = token_id(INTERNVL_SPECIALS, "start_image_token"), token_id(INTERNVL_SPECIALS, "end_image_token")


def tiny_internvl(num_layers=4, attn="sdpa", seed=0):
    from transformers import InternVLConfig, InternVLForConditionalGeneration, Qwen2Config
    from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

    vision = InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                  image_size=16, patch_size=4)
    config = InternVLConfig(vision_config=vision, text_config=Qwen2Config(**_text(num_hidden_layers=num_layers)),
                            image_token_id=INTERNVL_IMAGE, image_seq_length=4, downsample_ratio=0.5)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(InternVLForConditionalGeneration(config), [INTERNVL_IMAGE, INTERNVL_START, INTERNVL_END])


class InternVLInputs(FeatureCountInputs):
    def _image_counts(self, vision: dict) -> list[int]:
        return [4 * int(n) for n in self._patches]

    def __call__(self, text, images=None, **kwargs):
        flat = [img for row in images or [] for img in row]
        self._patches = self.image_processor(images=flat, return_tensors="pt")["num_patches"] if flat else []
        return super().__call__(text, images=images, **kwargs)


def internvl_processor():
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    images = GotOcr2ImageProcessorPil(size={"height": 16, "width": 16}, crop_to_patches=True, min_patches=1,
                                      max_patches=4)
    if HAS_TORCHVISION:
        from transformers import InternVLProcessor
        from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

        return InternVLProcessor(image_processor=images, tokenizer=word_tokenizer(INTERNVL_SPECIALS),
                                 video_processor=InternVLVideoProcessor(size={"height": 16, "width": 16}),
                                 image_seq_length=4, chat_template=INTERNVL_TEMPLATE)
    return InternVLInputs(images, word_tokenizer(INTERNVL_SPECIALS), tiny_internvl, "<IMG_CONTEXT>",
                          wrap=lambda token, count: "<img>" + token * count + "</img>", chat_template=INTERNVL_TEMPLATE)


def internvl_rows(processor):
    return [("<|im_start|>user\nwhat color <IMG_CONTEXT> the <IMG_CONTEXT> is this ?<|im_end|>\n<|im_start|>assistant\n",
             [image(40, 20, 1), image(16, 16, 2)]),
            ("<|im_start|>user\n<IMG_CONTEXT>how many ?<|im_end|>\n<|im_start|>assistant\n", [image(20, 44, 3)])]


# ---------------------------------------------------------------------------------------------------------
# Idefics3 / SmolVLM: image splitting into tiles + a global view, pixel-shuffle connector, row/col tags

IDEFICS_SPECIALS = {"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                    "end_of_utterance_token": "<end_of_utterance>", "global_image_token": "<global-img>",
                    **{f"row{i}{j}": f"<row_{i}_col_{j}>" for i in range(1, 4) for j in range(1, 4)}}
IDEFICS_IMAGE = token_id(IDEFICS_SPECIALS, "image_token")
IDEFICS_FAKE = token_id(IDEFICS_SPECIALS, "fake_image_token")
IDEFICS_GLOBAL = token_id(IDEFICS_SPECIALS, "global_image_token")


def tiny_idefics3(num_layers=4, attn="sdpa", seed=0, smolvlm=False):
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, LlamaConfig, SmolVLMConfig,
                              SmolVLMForConditionalGeneration)

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=16,
                  patch_size=4)
    text = LlamaConfig(**_text(num_hidden_layers=num_layers))
    config_cls, model_cls = ((SmolVLMConfig, SmolVLMForConditionalGeneration) if smolvlm
                             else (Idefics3Config, Idefics3ForConditionalGeneration))
    config = config_cls(vision_config=vision, text_config=text, image_token_id=IDEFICS_IMAGE, scale_factor=2)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(model_cls(config), [IDEFICS_IMAGE, IDEFICS_FAKE, IDEFICS_GLOBAL])


def idefics3_processor():
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    images = Idefics3ImageProcessorPil(size={"longest_edge": 32}, max_image_size={"longest_edge": 16},
                                       do_image_splitting=True)
    return Idefics3Processor(image_processor=images, tokenizer=word_tokenizer(IDEFICS_SPECIALS), image_seq_len=4,
                             chat_template=LLAVA_TEMPLATE)


def idefics3_rows(processor):
    return [("USER: what color <image> the <image> is this ?\nASSISTANT:", [image(40, 20, 1), image(16, 16, 2)]),
            ("USER: <image>how many ?\nASSISTANT:", [image(20, 44, 3)])]


# ---------------------------------------------------------------------------------------------------------
# Qwen3-VL / Qwen3-VL-MoE: M-RoPE (interleaved) + DeepStack (vision features of 3 tower layers added to the
# vision tokens' hidden states after text layers 0, 1, 2); the MoE variant has sparse expert MLPs


def tiny_qwen3_vl(num_layers=4, attn="sdpa", seed=0, moe=False):
    from transformers import (Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLMoeConfig,
                              Qwen3VLMoeForConditionalGeneration)

    text = _text(num_hidden_layers=num_layers, head_dim=8,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                  "mrope_interleaved": True})
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, decoder_sparse_step=1)
    vision = dict(depth=3, hidden_size=16, out_hidden_size=32, intermediate_size=32, num_heads=2, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                  deepstack_visual_indexes=[0, 1, 2])
    ids = dict(image_token_id=QWEN_IMAGE, video_token_id=QWEN_VIDEO, vision_start_token_id=QWEN_START,
               vision_end_token_id=QWEN_END)
    config_cls, model_cls = ((Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration) if moe
                             else (Qwen3VLConfig, Qwen3VLForConditionalGeneration))
    config = config_cls(text_config=text, vision_config=vision, **ids)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(model_cls(config), [QWEN_IMAGE, QWEN_VIDEO, QWEN_START, QWEN_END])


def qwen3_vl_injections(kwargs: dict) -> dict:
    features = kwargs.get("deepstack_visual_embeds")
    if features is None:
        return {}
    return {i + 1: (kwargs["visual_pos_masks"], entry) for i, entry in enumerate(features)}


# ---------------------------------------------------------------------------------------------------------
# GLM-4.1V / GLM-4.5V (MoE) / GLM-4.6V: M-RoPE (partial rotary), <|begin_of_image|> <|image|> x n <|end_of_image|>

GLM_SPECIALS = {"image_token": "<|image|>", "video_token": "<|video|>", "image_start": "<|begin_of_image|>",
                "image_end": "<|end_of_image|>", "video_start": "<|begin_of_video|>", "video_end": "<|end_of_video|>",
                "user": "<|user|>", "assistant": "<|assistant|>"}
GLM_IMAGE, GLM_VIDEO = token_id(GLM_SPECIALS, "image_token"), token_id(GLM_SPECIALS, "video_token")
GLM_MARKERS = [token_id(GLM_SPECIALS, key) for key in ("image_start", "image_end", "video_start", "video_end")]
GLM_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>{% elif item['type'] == 'video' %}"
    "<|begin_of_video|><|video|><|end_of_video|>{% else %}{{ item['text'] }}"
    "{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tiny_glm4v(num_layers=4, attn="sdpa", seed=0, variant="4.1"):
    from transformers import (Glm4vConfig, Glm4vForConditionalGeneration, Glm4vMoeConfig,
                              Glm4vMoeForConditionalGeneration, Glm46VConfig, Glm46VForConditionalGeneration)

    text = _text(num_hidden_layers=num_layers, head_dim=8,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 0],
                                  "partial_rotary_factor": 0.5})
    if variant == "4.5":  # sparse experts from layer 1 on, one shared expert
        text.update(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1,
                    first_k_dense_replace=1)
    vision = dict(depth=1, hidden_size=16, out_hidden_size=32, intermediate_size=32, num_heads=2, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, image_size=16)
    ids = dict(image_token_id=GLM_IMAGE, video_token_id=GLM_VIDEO, image_start_token_id=GLM_MARKERS[0],
               image_end_token_id=GLM_MARKERS[1], video_start_token_id=GLM_MARKERS[2],
               video_end_token_id=GLM_MARKERS[3])
    config_cls, model_cls = {"4.1": (Glm4vConfig, Glm4vForConditionalGeneration),
                             "4.5": (Glm4vMoeConfig, Glm4vMoeForConditionalGeneration),
                             "4.6": (Glm46VConfig, Glm46VForConditionalGeneration)}[variant]
    if variant == "4.6":
        text["model_type"] = "glm4v_text"
        vision["model_type"] = "glm4v_vision"
    config = config_cls(text_config=text, vision_config=vision, **ids)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(model_cls(config), [GLM_IMAGE, GLM_VIDEO, *GLM_MARKERS])


class GlmInputs(QwenInputs):
    """What Glm4vProcessor / Glm46VProcessor do (they need torchvision for their video processor): <|image|>
    expanded per image grid, mm_token_type_ids 1 on image tokens, 2 on those of video frames."""

    chat_template = GLM_TEMPLATE
    image_token, image_id, video_id = "<|image|>", GLM_IMAGE, GLM_VIDEO

    def __init__(self, image_processor, tokenizer, seconds: bool = False):
        super().__init__(image_processor, tokenizer)
        self.seconds = seconds  # GLM-4.6V writes "0.1 seconds" after each frame, GLM-4.1V / 4.5V whole seconds

    def expand_videos(self, text: str, total: int) -> str:
        """The video layout: per temporal patch a frame <|begin_of_image|> <|image|> x n <|end_of_image|> and
        the time of its first frame at VIDEO_FPS, all between <|begin_of_video|> and <|end_of_video|>."""
        t, h, w = QWEN_VIDEO_GRID
        times = [frame / VIDEO_FPS for frame in range(0, 2 * t, 2)]
        stamps = [f"{time:.1f} seconds" if self.seconds else str(int(time)) for time in times]
        frames = "".join("<|begin_of_image|>" + "<|image|>" * (h * w // 4) + "<|end_of_image|>" + stamp
                         for stamp in stamps)
        return text.replace("<|video|>", frames)

    def token_types(self, ids: torch.Tensor) -> torch.Tensor:
        """1 on image tokens, 2 on the image tokens inside a video segment (what Glm4vProcessor returns)."""
        starts = (ids == GLM_MARKERS[2]).long().cumsum(-1)
        ends = (ids == GLM_MARKERS[3]).long().cumsum(-1)
        image = ids == GLM_IMAGE
        return torch.where(image, torch.where(starts > ends, 2, 1), 0)


def glm_processor(variant: str = "4.1"):
    """Glm4vProcessor (GLM-4.1V, GLM-4.5V) or Glm46VProcessor (GLM-4.6V) where torchvision imports, else
    ``GlmInputs`` (tests/test_processor_standins.py compares them)."""
    if variant == "4.6":
        from transformers.models.glm46v.image_processing_pil_glm46v import Glm46VImageProcessorPil as Images
    else:
        from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil as Images

    images = Images(patch_size=4, merge_size=2, temporal_patch_size=2, size=QWEN_SIZE)
    tokenizer = word_tokenizer(GLM_SPECIALS)
    if not HAS_TORCHVISION:
        return GlmInputs(images, tokenizer, seconds=variant == "4.6")
    if variant == "4.6":
        from transformers import Glm46VProcessor as Processor
        from transformers.models.glm46v.video_processing_glm46v import Glm46VVideoProcessor as Videos
    else:
        from transformers import Glm4vProcessor as Processor
        from transformers.models.glm4v.video_processing_glm4v import Glm4vVideoProcessor as Videos

    # do_sample_frames=False: GLM's frame sampling needs the video's fps, which pre-sampled frames do not carry
    videos = Videos(patch_size=4, merge_size=2, temporal_patch_size=2, size=QWEN_SIZE, do_sample_frames=False)
    return Processor(image_processor=images, tokenizer=tokenizer, video_processor=videos, chat_template=GLM_TEMPLATE)


def glm_rows(processor):
    pad = "<|begin_of_image|><|image|><|end_of_image|>"
    return [(f"<|user|>\nwhat color {pad} the {pad} is this ?\n<|assistant|>\n", [image(40, 20, 1), image(16, 16, 2)]),
            (f"<|user|>\n{pad}how many ?\n<|assistant|>\n", [image(20, 44, 3)])]


# ---------------------------------------------------------------------------------------------------------
# Aya Vision / Cohere2 Vision (Cohere2 LM: sliding + full layers, the full ones without RoPE): image tiles +
# a global view, pixel-shuffle projector; VipLLaVA (multi-layer CLIP features); LLaVA-NeXT-Video and
# Video-LLaVA (images + videos; Video-LLaVA's pixels arrive as `pixel_values_images`)

AYA_SPECIALS = {"image_token": "<image>", "start": "<|START_OF_IMG|>", "end": "<|END_OF_IMG|>",
                "patch": "<|IMG_PATCH|>", "line_break": "<|IMG_LINE_BREAK|>", "tile": "TILE",
                "tile_global": "TILE_GLOBAL"}
AYA_PATCH = token_id(AYA_SPECIALS, "patch")
AYA_MARKERS = [token_id(AYA_SPECIALS, key) for key in ("start", "end", "line_break", "tile", "tile_global")]
COHERE_WINDOW = 6


def _cohere2_text(num_layers: int) -> dict:
    types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)]
    return dict(_text(num_hidden_layers=num_layers, head_dim=8, sliding_window=COHERE_WINDOW, layer_types=types),
                model_type="cohere2")


def _siglip_dict(image_size=16) -> dict:
    return dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=4, image_size=image_size, patch_size=4)


def tiny_aya_vision(num_layers=4, attn="sdpa", seed=0, cohere2_vision=False):
    from transformers import (AyaVisionConfig, AyaVisionForConditionalGeneration, Cohere2VisionConfig,
                              Cohere2VisionForConditionalGeneration)

    text, vision = _cohere2_text(num_layers), _siglip_dict()
    if cohere2_vision:
        config = Cohere2VisionConfig(vision_config=vision, text_config=text, downsample_factor=2,
                                     image_token_id=AYA_PATCH, alignment_intermediate_size=64)
        cls = Cohere2VisionForConditionalGeneration
    else:
        config = AyaVisionConfig(vision_config=vision, text_config=text, downsample_factor=2,
                                 image_token_index=AYA_PATCH)
        cls = AyaVisionForConditionalGeneration
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(cls(config), [AYA_PATCH, *AYA_MARKERS])


def _tiles_processor():
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    return GotOcr2ImageProcessorPil(size={"height": 16, "width": 16}, crop_to_patches=True, min_patches=1,
                                    max_patches=4)


def aya_vision_processor():
    from transformers import AyaVisionProcessor

    return AyaVisionProcessor(image_processor=_tiles_processor(), tokenizer=word_tokenizer(AYA_SPECIALS), patch_size=4,
                              img_size=16, downsample_factor=2, chat_template=LLAVA_TEMPLATE)


# Cohere2VisionProcessor takes the tokenizer's image_token (the patch token) as the prompt's placeholder, and its
# boi / eoi / line-break tokens from the tokenizer too; tiles of 16 x 16 pixels, at most COHERE2_TILES per image
COHERE2_TOKENS = {**AYA_SPECIALS, "image_token": "<|IMG_PATCH|>", "boi_token": "<|START_OF_IMG|>",
                  "eoi_token": "<|END_OF_IMG|>", "img_line_break_token": "<|IMG_LINE_BREAK|>"}
COHERE2_TEMPLATE = LLAVA_TEMPLATE.replace("<image>", "<|IMG_PATCH|>")
COHERE2_TILE, COHERE2_TILES = 16, 4
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def cohere2_grid(height: int, width: int) -> tuple[int, int]:
    """Cohere2VisionImageProcessor's tiling, (columns, rows): of the grids of at most COHERE2_TILES tiles (by
    area), the first that covers the image with the least upscaling, or, where every grid must shrink it, the
    first with the least downscaling."""
    grids = sorted(((cols, rows) for cols in range(1, COHERE2_TILES + 1) for rows in range(1, COHERE2_TILES + 1)
                    if cols * rows <= COHERE2_TILES), key=lambda grid: grid[0] * grid[1])
    scales = [min(COHERE2_TILE * cols / width, COHERE2_TILE * rows / height) for cols, rows in grids]
    if all(scale < 1 for scale in scales):
        return grids[scales.index(max(scales))]
    return grids[scales.index(min(scale for scale in scales if scale >= 1))]


class Cohere2VisionInputs(ShimProcessor):
    """What Cohere2VisionProcessor does (its image processor needs torchvision): per image, the grid of
    ``cohere2_grid`` (the image resized bicubically to it and cut into 16 x 16 tiles) and, where it has more
    than one tile, a 16 x 16 thumbnail; <|IMG_PATCH|> becomes <|START_OF_IMG|> + (<|IMG_PATCH|> x 4 +
    <|IMG_LINE_BREAK|>) per tile + <|END_OF_IMG|>."""

    chat_template = COHERE2_TEMPLATE

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text, images=None, padding=True, return_tensors="pt", **kwargs):
        flat = [img for row in images or [] for img in row]
        out, texts, tiles = {}, list(text), []
        for img in flat:
            pixels = torch_pixels(img)
            cols, rows = cohere2_grid(*pixels.shape[-2:])
            canvas = torch_resize(pixels, rows * COHERE2_TILE, cols * COHERE2_TILE, "bicubic")
            crops = [canvas[:, r * COHERE2_TILE:(r + 1) * COHERE2_TILE, c * COHERE2_TILE:(c + 1) * COHERE2_TILE]
                     for r in range(rows) for c in range(cols)]
            if len(crops) > 1:
                crops.append(torch_resize(pixels, COHERE2_TILE, COHERE2_TILE, "bicubic"))
            tiles.append(len(crops))
            out.setdefault("pixel_values", []).extend(torch_normalize(crop, CLIP_MEAN, CLIP_STD) for crop in crops)
        if flat:
            out["pixel_values"] = torch.stack(out["pixel_values"])
            counts = iter(tiles)
            texts = [_expand_with(t, "<|IMG_PATCH|>", lambda: "<|START_OF_IMG|>" + (
                "<|IMG_PATCH|>" * 4 + "<|IMG_LINE_BREAK|>") * next(counts) + "<|END_OF_IMG|>") for t in texts]
        encoded = self.tokenizer(texts, padding=padding, return_tensors=return_tensors)
        return _features({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], **out})


def cohere2_vision_processor():
    """Cohere2VisionProcessor where torchvision imports, else ``Cohere2VisionInputs``
    (tests/test_processor_standins.py compares them)."""
    tokenizer = word_tokenizer(AYA_SPECIALS, extra_special=COHERE2_TOKENS)
    if not HAS_TORCHVISION:
        return Cohere2VisionInputs(tokenizer)
    from transformers import Cohere2VisionProcessor
    from transformers.models.cohere2_vision.image_processing_cohere2_vision import Cohere2VisionImageProcessor

    # patch_size: image tokens per tile side (16 px tiles, 4 px SigLIP patches, downsample factor 2)
    images = Cohere2VisionImageProcessor(size={"height": COHERE2_TILE, "width": COHERE2_TILE}, patch_size=2,
                                         max_patches=COHERE2_TILES)
    return Cohere2VisionProcessor(image_processor=images, tokenizer=tokenizer, chat_template=COHERE2_TEMPLATE)


def cohere2_vision_rows(processor):
    """llava_rows with the patch token as placeholder and a 24 x 16 image in place of the 16 x 16 one: with
    Cohere2's tiling, 16 x 16 tiles would give both rows 16 image tokens (40 x 20: 2 x 1 tiles + thumbnail,
    20 x 44: 1 x 3 + thumbnail); 24 x 16 is upscaled to 2 x 1 tiles + thumbnail."""
    return [("USER: what color <|IMG_PATCH|>\nthe <|IMG_PATCH|>\nis this ? \nASSISTANT:",
             [image(40, 20, 1), image(24, 16, 2)]),
            ("USER: <|IMG_PATCH|>\nhow many ?\nASSISTANT:", [image(20, 44, 3)])]


VIDEO_SPECIALS = {"image_token": "<image>", "video_token": "<video>"}
VIDEO_IMAGE, VIDEO_VIDEO = token_id(VIDEO_SPECIALS, "image_token"), token_id(VIDEO_SPECIALS, "video_token")


def tiny_vipllava(num_layers=4, attn="sdpa", seed=0):
    from transformers import CLIPVisionConfig, LlamaConfig, VipLlavaConfig, VipLlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=16, patch_size=4, projection_dim=32)
    config = VipLlavaConfig(vision_config=vision, text_config=LlamaConfig(**_text(num_hidden_layers=num_layers)),
                            image_token_index=LLAVA_IMAGE, vision_feature_layers=[-2, -1], image_seq_length=16)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(VipLlavaForConditionalGeneration(config), [LLAVA_IMAGE])


def vipllava_processor():
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    images = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    return LlavaProcessor(image_processor=images, tokenizer=word_tokenizer(LLAVA_SPECIALS), patch_size=4,
                          vision_feature_select_strategy="full", num_additional_image_tokens=0,
                          chat_template=LLAVA_TEMPLATE)


def tiny_llava_next_video(num_layers=4, attn="sdpa", seed=0):
    from transformers import LlamaConfig, LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    config = LlavaNextVideoConfig(vision_config=_clip(), text_config=LlamaConfig(**_text(num_hidden_layers=num_layers)),
                                  image_token_index=VIDEO_IMAGE, video_token_index=VIDEO_VIDEO,
                                  image_grid_pinpoints=PINPOINTS, vision_feature_select_strategy="default",
                                  vision_feature_layer=-1, spatial_pool_stride=2)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(LlavaNextVideoForConditionalGeneration(config), [VIDEO_IMAGE, VIDEO_VIDEO])


def llava_next_video_processor():
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    images = LlavaNextImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                        image_grid_pinpoints=PINPOINTS)
    return FeatureCountInputs(images, word_tokenizer(VIDEO_SPECIALS), tiny_llava_next_video, "<image>", "<video>",
                              chat_template=LLAVA_TEMPLATE)


def tiny_video_llava(num_layers=4, attn="sdpa", seed=0):
    from transformers import LlamaConfig, VideoLlavaConfig, VideoLlavaForConditionalGeneration

    config = VideoLlavaConfig(vision_config=_clip(), text_config=LlamaConfig(**_text(num_hidden_layers=num_layers)),
                              image_token_index=VIDEO_IMAGE, video_token_index=VIDEO_VIDEO,
                              vision_feature_select_strategy="default", vision_feature_layer=-1, image_seq_length=16,
                              video_seq_length=2 * 16)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(VideoLlavaForConditionalGeneration(config), [VIDEO_IMAGE, VIDEO_VIDEO])


class VideoLlavaInputs(ShimProcessor):
    """What VideoLlavaProcessor does for images (it needs torchvision for its video processor): its own
    image processor, which returns the pixels as `pixel_values_images`; 16 tokens per 16x16 image."""

    chat_template = LLAVA_TEMPLATE

    def __init__(self):
        from transformers import VideoLlavaImageProcessor

        self.image_processor = VideoLlavaImageProcessor(size={"shortest_edge": 16},
                                                        crop_size={"height": 16, "width": 16})
        self.tokenizer = word_tokenizer(VIDEO_SPECIALS)

    def __call__(self, text, images=None, videos=None, padding=True, return_tensors="pt", **kwargs):
        flat = [img for row in images or [] for img in row]
        out, texts = {}, list(text)
        if flat:
            out["pixel_values_images"] = self.image_processor(images=flat, return_tensors="pt")["pixel_values_images"]
            texts = [_expand_with(t, "<image>", lambda: "<image>" * 16) for t in texts]
        if videos:  # 2 frames of 16x16 per video; a frame is 16 patches + CLS, all kept by the video tower
            generator = torch.Generator().manual_seed(7)
            out["pixel_values_videos"] = torch.randn(video_count(videos), 2, 3, 16, 16, generator=generator)
            texts = [_expand_with(t, "<video>", lambda: "<video>" * (2 * 17)) for t in texts]
        encoded = self.tokenizer(texts, padding=padding, return_tensors=return_tensors)
        return _features({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], **out})


# ---------------------------------------------------------------------------------------------------------
# Granite4-Vision: anyres LLaVA-NeXT layout whose image features enter ONLY through DeepStack, at arbitrary
# decoder layers ({layer: features} added to the image positions before that layer; the positions are zeroed
# in the embeddings); here layers 0 and 2 from two tower layers, and spatial groups at layers 1 and 3


def tiny_granite4_vision(num_layers=4, attn="sdpa", seed=0):
    from transformers import CLIPVisionConfig, Granite4VisionConfig, Granite4VisionForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=16, patch_size=4, projection_dim=32)
    config = Granite4VisionConfig(vision_config=vision, text_config=_text(num_hidden_layers=num_layers),
                                  image_token_index=LLAVA_IMAGE, image_grid_pinpoints=PINPOINTS,
                                  vision_feature_select_strategy="default", vision_feature_layer=-1,
                                  downsample_rate="1/2", deepstack_layer_map=[[1, 0], [2, 2]], spatial_vision_layer=-1,
                                  spatial_target_layers=[1, 1, 3, 3], projector_dropout=0.0)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(Granite4VisionForConditionalGeneration(config), [LLAVA_IMAGE])


class Granite4VisionInputs(FeatureCountInputs):
    """Granite4VisionProcessor's inputs: the LLaVA-NeXT image processor's pixels, <image> expanded to the
    number of (deepstack) features the model makes per image."""

    def _image_counts(self, vision: dict) -> list[int]:
        out = self.model.model.get_image_features(pixel_values=vision["pixel_values"],
                                                  image_sizes=vision["image_sizes"])
        return [len(features) for features in out.deepstack_features[0][1]]


def granite4_vision_processor():
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    images = LlavaNextImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                        image_grid_pinpoints=PINPOINTS)
    return Granite4VisionInputs(images, word_tokenizer(LLAVA_SPECIALS), tiny_granite4_vision, "<image>",
                                chat_template=LLAVA_TEMPLATE)


def granite4_vision_injections(kwargs: dict) -> dict:
    features = kwargs.get("deepstack_features")
    if features is None:
        return {}
    return {layer: (kwargs["vision_mask"][..., 0], entry) for layer, entry in features.items()}


# ---------------------------------------------------------------------------------------------------------
# PaliGemma: prefix-LM (the whole prompt, image AND text, attends bidirectionally; token_type_ids 0)

PALIGEMMA_TEMPLATE = ("{% for message in messages %}{% for item in message['content'] %}"
                      "{% if item['type'] == 'image' %}<image>{% else %}{{ item['text'] }}{% endif %}{% endfor %}"
                      "{% endfor %}")


def tiny_paligemma(num_layers=4, attn="sdpa", seed=0):
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    config = PaliGemmaConfig(vision_config=_siglip_dict(), text_config=dict(_text(num_hidden_layers=num_layers,
                                                                                  head_dim=8), model_type="gemma"),
                             image_token_index=LLAVA_IMAGE, projection_dim=32)
    config.text_config.num_image_tokens = 16
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(PaliGemmaForConditionalGeneration(config), [LLAVA_IMAGE])


def paligemma_processor():
    from transformers import PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    images = SiglipImageProcessorPil(size={"height": 16, "width": 16})
    images.image_seq_length = 16
    return PaliGemmaProcessor(image_processor=images, tokenizer=word_tokenizer(LLAVA_SPECIALS),
                              chat_template=PALIGEMMA_TEMPLATE)


def paligemma_rows(processor):
    return [("<image><image>what color is the red ?", [image(40, 20, 1), image(16, 16, 2)]),
            ("<image>how many ?", [image(20, 44, 3)])]


# ---------------------------------------------------------------------------------------------------------
# DeepSeek-VL and Janus (SigLIP-style tower + MLP aligner; Janus also carries a VQ image generator):
# a fixed number of image tokens per image, Janus between <begin_of_image> / <end_of_image>

JANUS_SPECIALS = {"image_token": "<image>", "boi_token": "<begin_of_image>", "eoi_token": "<end_of_image>"}
JANUS_IMAGE = token_id(JANUS_SPECIALS, "image_token")
JANUS_MARKERS = [token_id(JANUS_SPECIALS, key) for key in ("boi_token", "eoi_token")]


def tiny_deepseek_vl(num_layers=4, attn="sdpa", seed=0):
    from transformers import DeepseekVLConfig, DeepseekVLForConditionalGeneration

    config = DeepseekVLConfig(vision_config=_siglip_dict(), text_config=dict(_text(num_hidden_layers=num_layers),
                                                                            model_type="llama"),
                              image_token_id=LLAVA_IMAGE)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(DeepseekVLForConditionalGeneration(config), [LLAVA_IMAGE])


def deepseek_vl_processor():
    from transformers import DeepseekVLProcessor
    from transformers.models.deepseek_vl.image_processing_pil_deepseek_vl import DeepseekVLImageProcessorPil

    return DeepseekVLProcessor(image_processor=DeepseekVLImageProcessorPil(size={"height": 16, "width": 16}),
                               tokenizer=word_tokenizer(LLAVA_SPECIALS), num_image_tokens=16,
                               chat_template=LLAVA_TEMPLATE)


def tiny_janus(num_layers=4, attn="sdpa", seed=0):
    from transformers import JanusConfig, JanusForConditionalGeneration

    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, image_size=16, patch_size=4,
                  projection_dim=32, depth=1, num_image_tokens=16, mlp_ratio=2)
    vq = dict(embed_dim=8, num_embeddings=16, latent_channels=32, base_channels=32, channel_multiplier=[1, 1],
              num_res_blocks=1, num_patches=4, projection_dim=32, image_token_embed_dim=32)
    config = JanusConfig(vision_config=vision, vq_config=vq, image_token_id=JANUS_IMAGE,
                         text_config=dict(_text(num_hidden_layers=num_layers), model_type="llama"))
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(JanusForConditionalGeneration(config), [JANUS_IMAGE, *JANUS_MARKERS])


def janus_processor():
    from transformers import JanusProcessor
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    return JanusProcessor(image_processor=JanusImageProcessorPil(size={"height": 16, "width": 16}),
                          tokenizer=word_tokenizer(JANUS_SPECIALS), num_image_tokens=16, chat_template=LLAVA_TEMPLATE)


# ---------------------------------------------------------------------------------------------------------
# Idefics2: image splitting + a perceiver resampler (a fixed 4 latents per image / tile here)

IDEFICS2_SPECIALS = {"image_token": "<image>", "image_boundary_token": "<fake_token_around_image>",
                     "end_of_utterance_token": "<end_of_utterance>"}
IDEFICS2_IMAGE, IDEFICS2_FAKE = token_id(IDEFICS2_SPECIALS, "image_token"), token_id(IDEFICS2_SPECIALS,
                                                                                      "image_boundary_token")


def tiny_idefics2(num_layers=4, attn="sdpa", seed=0):
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=16,
                  patch_size=4)
    perceiver = dict(hidden_size=32, resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2,
                     resampler_head_dim=8, num_key_value_heads=1)
    config = Idefics2Config(vision_config=vision, perceiver_config=perceiver, image_token_id=IDEFICS2_IMAGE,
                            text_config=dict(_text(num_hidden_layers=num_layers), model_type="mistral"))
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(Idefics2ForConditionalGeneration(config), [IDEFICS2_IMAGE, IDEFICS2_FAKE])


def idefics2_processor():
    from transformers import Idefics2Processor
    from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

    images = Idefics2ImageProcessorPil(size={"longest_edge": 16, "shortest_edge": 16}, do_image_splitting=True)
    return Idefics2Processor(image_processor=images, tokenizer=word_tokenizer(IDEFICS2_SPECIALS), image_seq_len=4,
                             chat_template=LLAVA_TEMPLATE)


# ---------------------------------------------------------------------------------------------------------
# LightOnOCR: Pixtral vision encoder (variable image sizes, patch merger) + Qwen3 language model


def tiny_lighton_ocr(num_layers=4, attn="sdpa", seed=0):
    from transformers import LightOnOcrConfig, LightOnOcrForConditionalGeneration

    vision = dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=4, image_size=32, patch_size=4, head_dim=8)
    config = LightOnOcrConfig(vision_config=vision, image_token_id=PIXTRAL_IMAGE, spatial_merge_size=2,
                              text_config=dict(_text(num_hidden_layers=num_layers, head_dim=8), model_type="qwen3"))
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(LightOnOcrForConditionalGeneration(config), [PIXTRAL_IMAGE])


def lighton_ocr_processor():
    from transformers import LightOnOcrProcessor
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    images = PixtralImageProcessorPil(size={"longest_edge": 32}, patch_size={"height": 4, "width": 4})
    return LightOnOcrProcessor(image_processor=images, tokenizer=word_tokenizer(PIXTRAL_SPECIALS), patch_size=4,
                               spatial_merge_size=2, chat_template=PIXTRAL_TEMPLATE)


# ---------------------------------------------------------------------------------------------------------
# Ovis2: image tiles + a global view; <IMG_ATOM> tokens (withdrawn) and visual indicator tokens (start, grid,
# col, row, end: kept) whose embeddings come from the visual embedding table

OVIS_SPECIALS = {"image_token": "<image>", "atom": "<IMG_ATOM>", "start": "<IMG_START>", "grid": "<IMG_GRID>",
                 "col": "<IMG_COL>", "row": "<IMG_ROW>", "end": "<IMG_END>"}
OVIS_ATOM = token_id(OVIS_SPECIALS, "atom")
OVIS_INDICATORS = [token_id(OVIS_SPECIALS, key) for key in ("start", "grid", "col", "row", "end")]


def tiny_ovis2(num_layers=4, attn="sdpa", seed=0):
    from transformers import Ovis2Config, Ovis2ForConditionalGeneration

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=16,
                  patch_size=4, vocab_size=64, hidden_stride=2)
    text = dict(_text(num_hidden_layers=num_layers), model_type="qwen2")
    config = Ovis2Config(vision_config=vision, text_config=text,
                         image_token_id=OVIS_ATOM, visual_indicator_token_ids=OVIS_INDICATORS, vocab_size=VOCAB,
                         hidden_size=32)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(Ovis2ForConditionalGeneration(config), [OVIS_ATOM, *OVIS_INDICATORS])


def ovis2_processor():
    from transformers import Ovis2Processor
    from transformers.models.ovis2.image_processing_pil_ovis2 import Ovis2ImageProcessorPil

    images = Ovis2ImageProcessorPil(size={"height": 16, "width": 16}, crop_to_patches=True, min_patches=1,
                                    max_patches=4)
    return Ovis2Processor(image_processor=images, tokenizer=word_tokenizer(OVIS_SPECIALS), image_seq_length=4,
                          chat_template=LLAVA_TEMPLATE)


def ovis2_rows(processor):
    return [("USER: what color <image>\nthe <image>\nis this ? \nASSISTANT:", [image(40, 20, 1), image(16, 16, 2)]),
            ("USER: <image>\nhow many ?\nASSISTANT:", [image(16, 16, 3)])]


def glm_one_image_rows(processor):
    pad = "<|begin_of_image|><|image|><|end_of_image|>"
    return [(f"<|user|>\nwhat color {pad} is this ?\n<|assistant|>\n", [image(40, 20, 1)]),
            (f"<|user|>\n{pad}how many ?\n<|assistant|>\n", [image(20, 44, 3)])]


GLM_BEAMS = dict(beam_rows=glm_one_image_rows,
                 beam_rows_reason="transformers 5.24: GLM-4V beam search splits the vision features of a row with two "
                                  "images wrongly across beams, without withdrawal too")

# Gemma 4: sliding + full layers, bidirectional image blocks on sliding layers only, per-layer inputs (PLE)
# passed positionally to every layer, KV sharing (the last layer reuses the keys/values of layer 2)

# The audio tokens: Gemma4Processor (transformers 5.24) refuses a tokenizer without boa / eoa tokens, even
# without audio (real Gemma 4 tokenizers have them)
GEMMA4_SPECIALS = {"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
                   "video_token": "<|video|>", "start_turn": "<|turn>", "end_turn": "<turn|>",
                   "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>"}
GEMMA4_IMAGE, GEMMA4_BOI = token_id(GEMMA4_SPECIALS, "image_token"), token_id(GEMMA4_SPECIALS, "boi_token")
GEMMA4_EOI, GEMMA4_VIDEO = token_id(GEMMA4_SPECIALS, "eoi_token"), token_id(GEMMA4_SPECIALS, "video_token")
GEMMA4_TEMPLATE = GEMMA_TEMPLATE.replace("<start_of_image>", "<|image|>").replace("<start_of_turn>", "<|turn>") \
    .replace("<end_of_turn>", "<turn|>").replace("{% else %}", "{% elif item['type'] == 'video' %}<|video|>{% else %}")


def tiny_gemma4(num_layers=4, attn="sdpa", seed=0, **text_overrides):
    """Layers S S F .. F (every third full, the last full); the last layer reuses the keys/values of the last
    full layer before it (num_kv_shared_layers=1), so withdrawal is exact at K <= that layer only.
    ``text_overrides``: other Gemma4TextConfig values (e.g. global_head_dim, attention_k_eq_v)."""
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration, Gemma4TextConfig, Gemma4VisionConfig

    types = ["full_attention" if i % 3 == 2 else "sliding_attention" for i in range(num_layers)]
    types[-1] = "full_attention"
    text = Gemma4TextConfig(**_text(**{**dict(num_hidden_layers=num_layers, head_dim=8, global_head_dim=8,
                                              layer_types=types, sliding_window=GEMMA_WINDOW,
                                              hidden_size_per_layer_input=8, vocab_size_per_layer_input=VOCAB,
                                              num_kv_shared_layers=1, use_bidirectional_attention="vision"),
                                       **text_overrides}))
    vision = Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                num_key_value_heads=4, head_dim=8, patch_size=4, pooling_kernel_size=2,
                                position_embedding_size=64)
    config = Gemma4Config(text_config=text, vision_config=vision, audio_config=None, image_token_id=GEMMA4_IMAGE,
                          boi_token_id=GEMMA4_BOI, eoi_token_id=GEMMA4_EOI, video_token_id=GEMMA4_VIDEO)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(Gemma4ForConditionalGeneration(config), [GEMMA4_IMAGE, GEMMA4_BOI, GEMMA4_EOI, GEMMA4_VIDEO])


class Gemma4Inputs(ShimProcessor):
    """What Gemma4Processor does (it needs torchvision for its video processor): each <|image|> becomes
    <|image> + one <|image|> per soft token of that image + <image|>; each <|video|> becomes, per frame,
    "mm:ss <|image>" + one <|video|> per soft token of that frame + "<image|>" (the frame's time at VIDEO_FPS;
    frames through the image processor, which patchifies them as the video processor does, resizing with PIL
    where it resizes with torchvision); mm_token_type_ids marks image (1) and video (2) tokens."""

    chat_template = GEMMA4_TEMPLATE

    def __init__(self, image_processor, tokenizer):
        self.image_processor, self.tokenizer = image_processor, tokenizer

    def __call__(self, text, images=None, videos=None, padding=True, return_tensors="pt"):
        out, texts = {}, list(text)
        if images and any(images):
            vision = self.image_processor(images=[list(row) for row in images], return_tensors="pt")
            out.update(pixel_values=vision["pixel_values"], image_position_ids=vision["image_position_ids"])
            counts = iter(vision["num_soft_tokens_per_image"].tolist())
            texts = [_expand_with(t, "<|image|>", lambda: "<|image>" + "<|image|>" * next(counts) + "<image|>")
                     for t in texts]
        if videos:
            clips = [[Image.fromarray(np.asarray(frame)) for frame in clip] for clip in videos]
            frames = self.image_processor(images=[frame for clip in clips for frame in clip], return_tensors="pt")
            out.update(pixel_values_videos=frames["pixel_values"], video_position_ids=frames["image_position_ids"],
                       num_frames_per_video=torch.tensor([len(clip) for clip in clips]))
            per_frame = iter(frames["num_soft_tokens_per_image"].tolist())
            stamps = [f"{int(second // 60):02d}:{int(second % 60):02d}"
                      for second in (frame / VIDEO_FPS for frame in range(max(map(len, clips))))]
            layouts = iter([" ".join(f"{stamps[t]} <|image>" + "<|video|>" * next(per_frame) + "<image|>"
                                     for t in range(len(clip))) for clip in clips])
            texts = [_expand_with(t, "<|video|>", lambda: next(layouts)) for t in texts]
        encoded = self.tokenizer(texts, padding=padding, return_tensors=return_tensors)
        ids = encoded["input_ids"]
        types = (ids == GEMMA4_IMAGE).long() + 2 * (ids == GEMMA4_VIDEO).long()
        return _features({"input_ids": ids, "attention_mask": encoded["attention_mask"], "mm_token_type_ids": types,
                          **out})


def gemma4_processor():
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    images = Gemma4ImageProcessorPil(patch_size=4, pooling_kernel_size=2, max_soft_tokens=70)
    if not HAS_TORCHVISION:
        return Gemma4Inputs(images, word_tokenizer(GEMMA4_SPECIALS))
    from transformers import Gemma4Processor
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
    from transformers.models.gemma4.video_processing_gemma4 import Gemma4VideoProcessor

    # do_sample_frames=False: the frames arrive sampled (its default samples 32 of them)
    videos = Gemma4VideoProcessor(patch_size=4, pooling_kernel_size=2, max_soft_tokens=70, do_sample_frames=False)
    return Gemma4Processor(feature_extractor=Gemma4AudioFeatureExtractor(), image_processor=images,
                           tokenizer=word_tokenizer(GEMMA4_SPECIALS), video_processor=videos,
                           chat_template=GEMMA4_TEMPLATE)


def gemma4_blocks(ids: torch.Tensor, config) -> torch.Tensor:
    """Block id per token (-1 outside): contiguous runs of image or video soft tokens (one per image / frame)."""
    vision = (ids == config.image_token_id) | (ids == config.video_token_id)
    starts = vision & ~torch.cat([torch.zeros_like(vision[..., :1]), vision[..., :-1]], dim=-1)
    return torch.where(vision, starts.long().cumsum(-1) - 1, torch.full_like(ids, -1))


def gemma4_rows(processor):
    return [("<|turn>user\nwhat color <|image|> the <|image|> is this ?<turn|>\n<|turn>model\n",
             [image(40, 20, 1), image(16, 16, 2)]),
            ("<|turn>user\n<|image|>how many ?<turn|>\n<|turn>model\n", [image(20, 44, 3)])]


FAMILIES: dict[str, Family] = {
    "llava_next": Family("LLaVA-NeXT", "LlavaNextForConditionalGeneration", tiny_llava_next, llava_next_processor,
                         llava_rows, lambda config: [config.image_token_id]),
    "qwen2_vl": Family("Qwen2-VL", "Qwen2VLForConditionalGeneration", tiny_qwen2_vl, qwen_processor, qwen_rows,
                       lambda config: [config.image_token_id, config.video_token_id]),
    "qwen2_5_vl": Family("Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration",
                         lambda n, a="sdpa", s=0: tiny_qwen2_vl(n, a, s, version="2.5"),
                         lambda: qwen_processor("2.5"), qwen_rows,
                         lambda config: [config.image_token_id, config.video_token_id]),
    "qwen3_vl": Family("Qwen3-VL", "Qwen3VLForConditionalGeneration", tiny_qwen3_vl, lambda: qwen_processor("3"),
                       qwen_rows,
                       lambda config: [config.image_token_id, config.video_token_id],
                       injections=qwen3_vl_injections),
    "qwen3_vl_moe": Family("Qwen3-VL-MoE", "Qwen3VLMoeForConditionalGeneration",
                           lambda n, a="sdpa", s=0: tiny_qwen3_vl(n, a, s, moe=True), lambda: qwen_processor("3"),
                           qwen_rows,
                           lambda config: [config.image_token_id, config.video_token_id],
                           injections=qwen3_vl_injections),
    "glm4v": Family("GLM-4.1V", "Glm4vForConditionalGeneration", tiny_glm4v, glm_processor, glm_rows,
                    lambda config: [config.image_token_id], **GLM_BEAMS),
    "glm4v_moe": Family("GLM-4.5V", "Glm4vMoeForConditionalGeneration",
                        lambda n, a="sdpa", s=0: tiny_glm4v(n, a, s, variant="4.5"), glm_processor, glm_rows,
                        lambda config: [config.image_token_id], **GLM_BEAMS),
    "glm46v": Family("GLM-4.6V", "Glm46VForConditionalGeneration",
                     lambda n, a="sdpa", s=0: tiny_glm4v(n, a, s, variant="4.6"), lambda: glm_processor("4.6"),
                     glm_rows,
                     lambda config: [config.image_token_id], **GLM_BEAMS),
    "aya_vision": Family("Aya Vision", "AyaVisionForConditionalGeneration", tiny_aya_vision, aya_vision_processor,
                         llava_rows, lambda config: [config.image_token_id]),
    "cohere2_vision": Family("Cohere2 Vision", "Cohere2VisionForConditionalGeneration",
                             lambda n, a="sdpa", s=0: tiny_aya_vision(n, a, s, cohere2_vision=True),
                             cohere2_vision_processor, cohere2_vision_rows,
                             lambda config: [config.image_token_id]),
    "vipllava": Family("VipLLaVA", "VipLlavaForConditionalGeneration", tiny_vipllava, vipllava_processor, llava_rows,
                       lambda config: [config.image_token_id]),
    "llava_next_video": Family("LLaVA-NeXT-Video", "LlavaNextVideoForConditionalGeneration", tiny_llava_next_video,
                               llava_next_video_processor, llava_rows,
                               lambda config: [config.image_token_id, config.video_token_id]),
    "video_llava": Family("Video-LLaVA", "VideoLlavaForConditionalGeneration", tiny_video_llava, VideoLlavaInputs,
                          llava_rows, lambda config: [config.image_token_id, config.video_token_id]),
    "granite4_vision": Family("Granite4-Vision", "Granite4VisionForConditionalGeneration", tiny_granite4_vision,
                              granite4_vision_processor, llava_rows, lambda config: [config.image_token_id],
                              injections=granite4_vision_injections),
    "paligemma": Family("PaliGemma", "PaliGemmaForConditionalGeneration", tiny_paligemma, paligemma_processor,
                        paligemma_rows, lambda config: [config.image_token_id],
                        image_blocks=lambda ids, config: torch.zeros_like(ids), blocks_after_withdrawal=True,
                        generated_token_type=1),
    "deepseek_vl": Family("DeepSeek-VL", "DeepseekVLForConditionalGeneration", tiny_deepseek_vl,
                          deepseek_vl_processor, llava_rows, lambda config: [config.image_token_id]),
    "janus": Family("Janus", "JanusForConditionalGeneration", tiny_janus, janus_processor, llava_rows,
                    lambda config: [config.image_token_id]),
    "idefics2": Family("Idefics2", "Idefics2ForConditionalGeneration", tiny_idefics2, idefics2_processor,
                       idefics3_rows, lambda config: [config.image_token_id]),
    "lighton_ocr": Family("LightOnOCR", "LightOnOcrForConditionalGeneration", tiny_lighton_ocr, lighton_ocr_processor,
                          mistral3_rows, lambda config: [config.image_token_id]),
    "ovis2": Family("Ovis2", "Ovis2ForConditionalGeneration", tiny_ovis2, ovis2_processor, ovis2_rows,
                    lambda config: [config.image_token_id]),
    "gemma3": Family("Gemma 3", "Gemma3ForConditionalGeneration", tiny_gemma3, gemma3_processor, gemma3_rows,
                     lambda config: [config.image_token_id], image_blocks=gemma3_blocks),
    "llava_onevision": Family("LLaVA-OneVision", "LlavaOnevisionForConditionalGeneration", tiny_llava_onevision,
                              llava_onevision_processor, llava_rows,
                              lambda config: [config.image_token_id, config.video_token_id]),
    "mistral3": Family("Mistral3", "Mistral3ForConditionalGeneration", tiny_mistral3, mistral3_processor,
                       mistral3_rows, lambda config: [config.image_token_id]),
    "internvl": Family("InternVL", "InternVLForConditionalGeneration", tiny_internvl, internvl_processor,
                       internvl_rows, lambda config: [config.image_token_id]),
    "idefics3": Family("Idefics3", "Idefics3ForConditionalGeneration", tiny_idefics3, idefics3_processor,
                       idefics3_rows, lambda config: [config.image_token_id]),
    "smolvlm": Family("SmolVLM", "SmolVLMForConditionalGeneration",
                      lambda n, a="sdpa", s=0: tiny_idefics3(n, a, s, smolvlm=True), idefics3_processor,
                      idefics3_rows, lambda config: [config.image_token_id]),
    "gemma4": Family("Gemma 4", "Gemma4ForConditionalGeneration", tiny_gemma4, gemma4_processor, gemma4_rows,
                     lambda config: [config.image_token_id, config.video_token_id], image_blocks=gemma4_blocks,
                     image_block_layer_types=("sliding_attention",)),
}


def family_batch(family: Family, processor=None):
    """(batched left-padded inputs, [per-row unpadded inputs]) from the family's processor."""
    processor = processor or family.processor()
    rows = family.rows(processor)
    batch = processor(text=[t for t, _ in rows], images=[imgs for _, imgs in rows], padding=True, return_tensors="pt")
    singles = [processor(text=[t], images=[imgs], return_tensors="pt") for t, imgs in rows]
    # PaliGemma's processor also returns training labels (all -100 without a suffix): inference takes none
    return ({k: v for k, v in batch.items() if k != "labels"},
            [{k: v for k, v in single.items() if k != "labels"} for single in singles])


def save_family(family: Family, directory, num_layers: int = 4, attn: str = "sdpa"):
    """A tiny model + its processor saved with save_pretrained, as a user's local model directory.

    Returns (directory, shim): shim is the stand-in processor where the real one cannot be built (no
    torchvision), for the caller to serve in place of AutoProcessor.from_pretrained; else None."""
    model = family.build(num_layers, attn, 0)
    model.config.architectures = [family.architecture]
    model.save_pretrained(directory)
    processor = family.processor()
    if isinstance(processor, ShimProcessor):
        processor.tokenizer.save_pretrained(directory)
        return str(directory), processor
    processor.save_pretrained(directory)
    return str(directory), None


def save_and_serve(family: Family, directory, monkeypatch, num_layers: int = 4) -> str:
    """``save_family``, then (where the real processor cannot be built here) make AutoProcessor serve the
    stand-in for that directory, so vtwcli loads the saved model by the path a user would pass."""
    import transformers

    directory, shim = save_family(family, directory, num_layers=num_layers)
    if shim is not None:
        monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *args, **kwargs: shim)
    return directory


# ---------------------------------------------------------------------------------------------------------
# Llama 4: chunked-attention layers + a NoPE full-attention layer (attention temperature tuning), MoE every
# other layer. transformers 5.24's Llama4ForConditionalGeneration.forward fails on every call (upstream bug),
# so withdrawal runs on its language model (Llama4ForCausalLM) with inputs_embeds + vision_mask.

LLAMA4_IMAGE, LLAMA4_BOI, LLAMA4_EOI = 4, 5, 6
LLAMA4_CHUNK = 8


def tiny_llama4(num_layers=4, attn="sdpa", seed=0, floor_scale: int = 8192, attn_scale: float = 0.1):
    from transformers import Llama4Config, Llama4ForConditionalGeneration, Llama4TextConfig, Llama4VisionConfig

    text = Llama4TextConfig(**_text(num_hidden_layers=num_layers, head_dim=8, intermediate_size_mlp=64,
                                    attention_chunk_size=LLAMA4_CHUNK,
                                    no_rope_layers=[1] * (num_layers - 1) + [0],  # the last layer: NoPE, full
                                    num_local_experts=2, num_experts_per_tok=1, interleave_moe_layer_step=2,
                                    floor_scale=floor_scale, attn_scale=attn_scale))
    vision = Llama4VisionConfig(hidden_size=32, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                                image_size=16, patch_size=4, vision_output_dim=32, projector_input_dim=32,
                                projector_output_dim=32, pixel_shuffle_ratio=0.5)
    config = Llama4Config(vision_config=vision, text_config=text, image_token_index=LLAMA4_IMAGE,
                          boi_token_index=LLAMA4_BOI, eoi_token_index=LLAMA4_EOI)
    config._attn_implementation = attn
    config.text_config._attn_implementation = attn
    torch.manual_seed(seed)
    model = Llama4ForConditionalGeneration(config).eval()
    _finish(model.language_model, [LLAMA4_IMAGE, LLAMA4_BOI, LLAMA4_EOI])
    return model


@torch.no_grad()
def llama4_embeds(model, rows: list[tuple[list[int], int]]):
    """What Llama4ForConditionalGeneration.forward would hand its language model: per row (token ids with one
    <|image|> per image, images), each image as <|image_start|> + 4 image tokens + <|image_end|>, the image
    tokens replaced by the projected vision features. Left-padded: (inputs_embeds, attention_mask, vision_mask)."""
    ids_rows, pixels = [], []
    for ids, _ in rows:
        expanded = []
        for token in ids:
            expanded += [LLAMA4_BOI] + [LLAMA4_IMAGE] * 4 + [LLAMA4_EOI] if token == LLAMA4_IMAGE else [token]
        ids_rows.append(expanded)
    width = max(len(r) for r in ids_rows)
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(ids_rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    images = sum(int((torch.tensor(r) == LLAMA4_IMAGE).sum()) // 4 for r in ids_rows)
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randn(images, 3, 16, 16, generator=generator)
    features = model.get_image_features(pixel_values=pixels, return_dict=True).last_hidden_state
    projected = model.multi_modal_projector(features.reshape(-1, features.shape[-1]))
    embeds = model.language_model.get_input_embeddings()(ids)
    vision = ids == LLAMA4_IMAGE
    embeds[vision] = projected.to(embeds.dtype)
    return embeds, mask, vision


LLAMA4_ROWS = [([BOS, 7, 8, LLAMA4_IMAGE, 9, 10, LLAMA4_IMAGE, 11, 12, 13, 14, 15], 2),
               ([BOS, LLAMA4_IMAGE, 16, 17, 18], 1)]


# ---------------------------------------------------------------------------------------------------------
# Families with conv / recurrent layers between their attention layers (fixed-size state, no KV cache)

# Which decoder layers are conv / recurrent, per family, for num_layers layers: the patterns put layer K on a
# state layer with attention after it, the first attention layer at or after K, and (Qwen3.5, K = L - 1) only
# state layers after K, among K = 1..3 of the suite.
def _qwen3_5_layer_types(num_layers: int) -> list[str]:
    return ["full_attention" if i % 3 == 2 else "linear_attention" for i in range(num_layers)]


def _lfm2_layer_types(num_layers: int) -> list[str]:
    return ["full_attention" if i % 2 == 1 else "conv" for i in range(num_layers)]


def tiny_qwen3_5(num_layers=4, attn="sdpa", seed=0, moe=False):
    """Qwen3.5 (dense) or Qwen3.5-MoE: Gated DeltaNet linear attention + full attention, M-RoPE, partial RoPE."""
    from transformers import (Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3_5MoeConfig,
                              Qwen3_5MoeForConditionalGeneration)

    text = _text(num_hidden_layers=num_layers, head_dim=16, linear_conv_kernel_dim=4, linear_key_head_dim=8,
                 linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4,
                 layer_types=_qwen3_5_layer_types(num_layers),
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                  "mrope_interleaved": True, "partial_rotary_factor": 0.5})
    if moe:
        text.update(moe_intermediate_size=16, shared_expert_intermediate_size=16, num_experts=4, num_experts_per_tok=2)
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=4, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=32, num_position_embeddings=64)
    config_cls, model_cls = ((Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration) if moe
                             else (Qwen3_5Config, Qwen3_5ForConditionalGeneration))
    config = config_cls(text_config=text, vision_config=vision, image_token_id=QWEN_IMAGE, video_token_id=QWEN_VIDEO,
                        vision_start_token_id=QWEN_START, vision_end_token_id=QWEN_END)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = model_cls(config)
    with torch.no_grad():  # slow decay (real checkpoints have many slow heads): the state still remembers the image
        for module in model.modules():
            if hasattr(module, "A_log"):
                module.A_log.uniform_(math.log(0.01), math.log(0.1))
    return _finish(model, [QWEN_IMAGE, QWEN_VIDEO, QWEN_START, QWEN_END])


LFM2_SPECIALS = {"image_token": "<image>", "image_start": "<|image_start|>", "image_end": "<|image_end|>"}
LFM2_IMAGE = token_id(LFM2_SPECIALS, "image_token")
LFM2_START, LFM2_END = token_id(LFM2_SPECIALS, "image_start"), token_id(LFM2_SPECIALS, "image_end")
LFM2_PATCH, LFM2_FACTOR, LFM2_MAX_TOKENS = 4, 2, 16  # at most 16 image tokens (1024 pixels) per image
LFM2_MAX_PATCHES = LFM2_MAX_TOKENS * LFM2_FACTOR ** 2


def tiny_lfm2_vl(num_layers=4, attn="sdpa", seed=0):
    """LFM2-VL: short-conv (gated depthwise conv, fixed conv state) + full attention; SigLIP2 NaFlex vision."""
    from transformers import Lfm2VlConfig, Lfm2VlForConditionalGeneration

    # initializer_range 0.1 (not 0.02): a filler slot reaching a conv window then moves the last token's logits by
    # ~1e-2, far above the suite's 1e-4 (at 0.02 by ~5e-6: such a leak would pass unseen)
    text = _text(num_hidden_layers=num_layers, layer_types=_lfm2_layer_types(num_layers), conv_L_cache=3,
                 block_auto_adjust_ff_dim=False, conv_bias=False, initializer_range=0.1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                  patch_size=LFM2_PATCH, num_patches=16)
    config = Lfm2VlConfig(text_config=text, vision_config=vision, image_token_id=LFM2_IMAGE, projector_hidden_size=32,
                          downsample_factor=LFM2_FACTOR)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return _finish(Lfm2VlForConditionalGeneration(config), [LFM2_IMAGE, LFM2_START, LFM2_END])


def lfm2_size(height: int, width: int) -> tuple[int, int]:
    """Lfm2VlImageProcessor.smart_resize for one tile of at most LFM2_MAX_TOKENS image tokens: each side rounded
    to whole downsampling blocks, and where that exceeds the budget, both sides scaled down together (its
    minimum of one token is never binding: a side is at least one block)."""
    block = LFM2_PATCH * LFM2_FACTOR
    most = LFM2_MAX_TOKENS * block ** 2
    rounded_height, rounded_width = (max(block, round(side / block) * block) for side in (height, width))
    if rounded_height * rounded_width <= most:
        return rounded_height, rounded_width
    beta = math.sqrt(height * width / most)
    return tuple(max(block, math.floor(side / beta / block) * block) for side in (height, width))


class Lfm2VlInputs(ShimProcessor):
    """What Lfm2VlProcessor does for one tile per image (its image processor needs torchvision): each image
    resized (bilinear) to ``lfm2_size``, cut into flattened 4 x 4 patches padded to LFM2_MAX_PATCHES, with
    `spatial_shapes` and `pixel_attention_mask`; the placeholder becomes <|image_start|> + one <image> per
    2 x 2 block of patches + <|image_end|>."""

    chat_template = LLAVA_TEMPLATE

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text, images=None, videos=None, padding=True, return_tensors="pt"):
        flat = [img for row in images or [] for img in row]
        out, texts = {}, list(text)
        if flat:
            pixels, shapes, masks, counts = [], [], [], []
            for img in flat:
                array = torch_resize(torch_pixels(img), *lfm2_size(img.height, img.width), "bilinear")
                array = torch_normalize(array, (0.5,) * 3, (0.5,) * 3)
                rows, cols = array.shape[1] // LFM2_PATCH, array.shape[2] // LFM2_PATCH
                patches = array.reshape(3, rows, LFM2_PATCH, cols, LFM2_PATCH).permute(1, 3, 2, 4, 0)
                patches = patches.reshape(rows * cols, -1)
                padded = torch.zeros(LFM2_MAX_PATCHES, patches.shape[1])
                padded[:len(patches)] = patches
                mask = torch.zeros(LFM2_MAX_PATCHES, dtype=torch.int32)
                mask[:len(patches)] = 1
                pixels.append(padded), masks.append(mask), shapes.append([rows, cols])
                counts.append((rows // LFM2_FACTOR) * (cols // LFM2_FACTOR))
            out.update(pixel_values=torch.stack(pixels), pixel_attention_mask=torch.stack(masks),
                       spatial_shapes=torch.tensor(shapes))
            counts = iter(counts)
            texts = [_expand_with(t, "<image>", lambda: "<|image_start|>" + "<image>" * next(counts) + "<|image_end|>")
                     for t in texts]
        encoded = self.tokenizer(texts, padding=padding, return_tensors=return_tensors)
        return _features({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], **out})


def lfm2_vl_processor():
    """Lfm2VlProcessor (one tile per image) where torchvision imports, else ``Lfm2VlInputs``
    (tests/test_processor_standins.py compares them)."""
    tokenizer = word_tokenizer(LFM2_SPECIALS)
    if not HAS_TORCHVISION:
        return Lfm2VlInputs(tokenizer)
    from transformers import Lfm2VlProcessor
    from transformers.models.lfm2_vl.image_processing_lfm2_vl import Lfm2VlImageProcessor

    images = Lfm2VlImageProcessor(encoder_patch_size=LFM2_PATCH, downsample_factor=LFM2_FACTOR,
                                  do_image_splitting=False, min_image_tokens=1, max_image_tokens=LFM2_MAX_TOKENS)
    return Lfm2VlProcessor(image_processor=images, tokenizer=tokenizer, chat_template=LLAVA_TEMPLATE)


def lfm2_vl_tiling_processor(tile_size: int = 16, min_tiles: int = 2, max_tiles: int = 4):
    """Lfm2VlProcessor with image splitting on (needs torchvision): an image whose sides, rounded to whole 8 px
    blocks, exceed 2 x LFM2_MAX_TOKENS tokens is cut into the grid of ``min_tiles`` .. ``max_tiles`` tiles of
    ``tile_size`` px closest to its aspect ratio, plus its one-view thumbnail."""
    from transformers import Lfm2VlProcessor
    from transformers.models.lfm2_vl.image_processing_lfm2_vl import Lfm2VlImageProcessor

    images = Lfm2VlImageProcessor(encoder_patch_size=LFM2_PATCH, downsample_factor=LFM2_FACTOR, do_image_splitting=True,
                                  min_image_tokens=1, max_image_tokens=LFM2_MAX_TOKENS, tile_size=tile_size,
                                  min_tiles=min_tiles, max_tiles=max_tiles)
    return Lfm2VlProcessor(image_processor=images, tokenizer=word_tokenizer(LFM2_SPECIALS), chat_template=LLAVA_TEMPLATE)


def qwen3_5_processor():
    """Qwen3.5 uses Qwen3VLProcessor, like Qwen3-VL."""
    return qwen_processor("3")


FAMILIES.update({
    "qwen3_5": Family("Qwen3.5", "Qwen3_5ForConditionalGeneration", tiny_qwen3_5, qwen3_5_processor, qwen_rows,
                      lambda config: [config.image_token_id, config.video_token_id]),
    "qwen3_5_moe": Family("Qwen3.5-MoE", "Qwen3_5MoeForConditionalGeneration",
                          lambda n, a="sdpa", s=0: tiny_qwen3_5(n, a, s, moe=True), qwen3_5_processor, qwen_rows,
                          lambda config: [config.image_token_id, config.video_token_id]),
    "lfm2_vl": Family("LFM2-VL", "Lfm2VlForConditionalGeneration", tiny_lfm2_vl, lfm2_vl_processor, llava_rows,
                      lambda config: [config.image_token_id]),
})
