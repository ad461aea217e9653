"""Shared code for the bundled tiny LLaVA demo model of vtwcli.

Everything needed by ``train_bundled_model.py``, ``eval_bundled_model.py`` and
``make_datasets.py`` lives here:

* the synthetic visual tasks (seeded PIL rendering, question templates, answers),
* the word-level tokenizer / ``LlavaProcessor`` / chat template construction,
* the ``LlavaForConditionalGeneration`` configuration,
* a manual decoder forward that implements Visual Tokens Withdrawal (VTW) at
  decoder layer K: layers ``0..K-1`` see all tokens, layers ``K..L-1`` see only
  the non-vision tokens, each at its ORIGINAL RoPE position (positions are not
  renumbered), with a causal mask over the kept tokens.

Nothing here downloads anything; all objects are built locally.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

# --------------------------------------------------------------------------------------
# Task definition
# --------------------------------------------------------------------------------------

IMAGE_SIZE = 48
PATCH_SIZE = 12
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 16 (CLS dropped, strategy "default")

TASKS = ("color", "count", "position", "shape")

COLORS = {
    "red": (215, 45, 45),
    "green": (45, 165, 60),
    "blue": (45, 85, 215),
    "yellow": (225, 195, 35),
}
COLOR_NAMES = tuple(COLORS)
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom")
COUNTS = ("1", "2", "3", "4")
YESNO = ("yes", "no")  # no longer a task (see docs/MODEL_CARD.md); kept in WORDS so the vocabulary is unchanged

ANSWERS = {
    "color": COLOR_NAMES,
    "count": COUNTS,
    "position": POSITIONS,
    "shape": SHAPES,
}

# All questions are exactly 6 word-level tokens long (the "?" is its own token), so
# every prompt of every task has the same length and the same image-token positions.
QUESTION_TEMPLATES = {
    "color": "What color is the {shape}?",
    "count": "How many shapes are there?",
    "position": "Where is the {shape} located?",
    "shape": "What is the shape there?",
}

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
WORDS = [
    "user", "assistant", ":", "?", ".", ",",
    "what", "color", "is", "the", "how", "many", "shapes", "are", "there",
    "where", "located", "a", "an", "of", "in", "image", "picture", "shape",
    *SHAPES, *COLOR_NAMES, *COUNTS, *POSITIONS, *YESNO,
]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %} {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass
class Sample:
    task: str
    question: str
    answer: str
    image: Image.Image
    aux: np.ndarray | None = None  # (NUM_IMAGE_TOKENS, 3): per-patch colour, shape, "has a shape centre"


def _jitter_color(rng: random.Random, rgb):
    return tuple(int(min(255, max(0, c + rng.randint(-18, 18)))) for c in rgb)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, size: float, rgb):
    h = size / 2.0
    if shape == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=rgb)
    elif shape == "square":
        h2 = h * 0.9
        draw.rectangle([cx - h2, cy - h2, cx + h2, cy + h2], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, cy - h), (cx - h, cy + h * 0.9), (cx + h, cy + h * 0.9)], fill=rgb)
    else:  # pragma: no cover
        raise ValueError(shape)


def _place(rng: random.Random, sizes, tries: int = 200):
    """Non-overlapping centres for shapes of the given sizes inside the image."""
    for _ in range(tries):
        boxes = []
        ok = True
        for s in sizes:
            placed = False
            for _ in range(60):
                h = s / 2.0 + 1
                cx = rng.uniform(h, IMAGE_SIZE - h)
                cy = rng.uniform(h, IMAGE_SIZE - h)
                if all(abs(cx - bx) > (h + bh + 1) or abs(cy - by) > (h + bh + 1) for bx, by, bh in boxes):
                    boxes.append((cx, cy, h))
                    placed = True
                    break
            if not placed:
                ok = False
                break
        if ok:
            return [(b[0], b[1]) for b in boxes]
    raise RuntimeError("could not place shapes")


class _Canvas:
    """RGB image plus label maps used only for the auxiliary training targets."""

    def __init__(self, rng: random.Random):
        g = rng.randint(225, 255)
        bg = (g + rng.randint(-6, 0), g + rng.randint(-6, 0), g)
        bg = tuple(max(0, min(255, c)) for c in bg)
        self.img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), bg)
        self.draw = ImageDraw.Draw(self.img)
        self.lab_color = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
        self.lab_shape = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
        self.centres = []

    def shape(self, rng, shape, x, y, z, color):
        _draw_shape(self.draw, shape, x, y, z, _jitter_color(rng, COLORS[color]))
        _draw_shape(ImageDraw.Draw(self.lab_color), shape, x, y, z, 1 + COLOR_NAMES.index(color))
        _draw_shape(ImageDraw.Draw(self.lab_shape), shape, x, y, z, 1 + SHAPES.index(shape))
        self.centres.append((x, y))

    def aux(self) -> np.ndarray:
        g = IMAGE_SIZE // PATCH_SIZE
        out = np.zeros((g * g, 3), dtype=np.int64)
        for j, lab in enumerate((self.lab_color, self.lab_shape)):
            a = np.asarray(lab).reshape(g, PATCH_SIZE, g, PATCH_SIZE).transpose(0, 2, 1, 3).reshape(g * g, -1)
            for i in range(g * g):
                nz = a[i][a[i] > 0]
                if nz.size >= PATCH_SIZE * PATCH_SIZE // 6:
                    out[i, j] = np.bincount(nz).argmax()
        for x, y in self.centres:
            px = min(g - 1, int(x // PATCH_SIZE))
            py = min(g - 1, int(y // PATCH_SIZE))
            out[py * g + px, 2] = 1
        return out


def make_sample(rng: random.Random, task: str, with_aux: bool = False) -> Sample:
    cv = _Canvas(rng)
    if task == "color":
        shape = rng.choice(SHAPES)
        color = rng.choice(COLOR_NAMES)
        z = rng.uniform(14, 20)
        (x, y), = _place(rng, [z])
        cv.shape(rng, shape, x, y, z, color)
        q = QUESTION_TEMPLATES["color"].format(shape=shape)
        a = color
    elif task == "count":
        n = rng.randint(1, 4)
        sizes = [rng.uniform(10, 13) for _ in range(n)]
        centres = _place(rng, sizes)
        for z, (x, y) in zip(sizes, centres):
            cv.shape(rng, rng.choice(SHAPES), x, y, z, rng.choice(COLOR_NAMES))
        q = QUESTION_TEMPLATES["count"]
        a = str(n)
    elif task == "position":
        shape = rng.choice(SHAPES)
        where = rng.choice(POSITIONS)
        z = rng.uniform(12, 17)
        h = z / 2.0 + 1
        along = rng.uniform(17, IMAGE_SIZE - 17)
        edge = rng.uniform(h, 15)
        if where == "left":
            x, y = edge, along
        elif where == "right":
            x, y = IMAGE_SIZE - edge, along
        elif where == "top":
            x, y = along, edge
        else:
            x, y = along, IMAGE_SIZE - edge
        cv.shape(rng, shape, x, y, z, rng.choice(COLOR_NAMES))
        q = QUESTION_TEMPLATES["position"].format(shape=shape)
        a = where
    elif task == "shape":
        shape = rng.choice(SHAPES)
        z = rng.uniform(14, 20)
        (x, y), = _place(rng, [z])
        cv.shape(rng, shape, x, y, z, rng.choice(COLOR_NAMES))
        q = QUESTION_TEMPLATES["shape"]
        a = shape
    else:  # pragma: no cover
        raise ValueError(task)
    return Sample(task=task, question=q, answer=a, image=cv.img, aux=cv.aux() if with_aux else None)


def sample_stream_item(seed: int, index: int, with_aux: bool = False) -> Sample:
    """Deterministic sample number ``index`` of the stream with the given seed.

    The task cycles through TASKS so every batch is balanced.
    """
    rng = random.Random(seed * 1_000_003 + index)
    task = TASKS[index % len(TASKS)]
    return make_sample(rng, task, with_aux)


def sample_key(s: Sample) -> str:
    """Identity of a sample (image pixels + question): used to prove train/test disjointness."""
    h = hashlib.sha1()
    h.update(s.question.encode())
    h.update(s.image.tobytes())
    return h.hexdigest()


def blank_image() -> Image.Image:
    return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))


def chance_accuracy() -> float:
    """Accuracy of the best image-blind predictor: answers are uniform per question."""
    return float(np.mean([1.0 / len(ANSWERS[t]) for t in TASKS]))


# --------------------------------------------------------------------------------------
# Processor / tokenizer
# --------------------------------------------------------------------------------------

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_processor():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, decoders
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    vocab = {}
    for t in SPECIAL_TOKENS + WORDS:
        if t not in vocab:
            vocab[t] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    tok.add_special_tokens(SPECIAL_TOKENS)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
        model_max_length=128,
        chat_template=CHAT_TEMPLATE,
    )
    image_processor = CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": IMAGE_SIZE},
        do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    return processor


def prompt_for(processor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def images_to_tensor(images) -> torch.Tensor:
    """Fast equivalent of the CLIPImageProcessor for 48x48 RGB images (checked in the scripts)."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]) / 255.0
    arr = (arr - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class PromptCache:
    """Token ids of each question's full prompt, produced exactly as the loader does
    (chat template + LlavaProcessor image-token expansion + tokenizer)."""

    def __init__(self, processor):
        self.processor = processor
        self.cache: dict[str, list[int]] = {}

    def ids(self, question: str) -> list[int]:
        if question not in self.cache:
            text = prompt_for(self.processor, question)
            enc = self.processor(images=[blank_image()], text=[text], return_tensors="pt")
            self.cache[question] = enc["input_ids"][0].tolist()
        return self.cache[question]


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


def build_model(processor, text_layers: int = 8, text_hidden: int = 192, text_inter: int = 512,
                vision_layers: int = 3, vision_hidden: int = 128, seed: int = 0):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tok = processor.tokenizer
    vocab_size = 64
    assert len(tok) <= vocab_size
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 4,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=vision_hidden,
        num_channels=3,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=text_hidden,
        intermediate_size=text_inter,
        num_hidden_layers=text_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=NUM_IMAGE_TOKENS,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg)
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.max_new_tokens = 4
    model.generation_config.do_sample = False
    return model


# --------------------------------------------------------------------------------------
# Manual forward with Visual Tokens Withdrawal
# --------------------------------------------------------------------------------------


def _parts(model):
    m = model.model
    return m, m.language_model, model.lm_head


def embed(model, input_ids: torch.Tensor, pixel_values: torch.Tensor, return_feats: bool = False):
    m, lm, _ = _parts(model)
    cfg = model.config
    emb = lm.embed_tokens(input_ids)
    feats = m.get_image_features(
        pixel_values=pixel_values,
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
    ).pooler_output
    feats = torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats
    img_mask = (input_ids == cfg.image_token_id).unsqueeze(-1)
    emb = emb.masked_scatter(img_mask, feats.to(emb.dtype).reshape(-1).contiguous())
    return (emb, feats) if return_feats else emb


def run_layers(model, h, pos_ids, start: int, end: int):
    _, lm, _ = _parts(model)
    cos_sin = lm.rotary_emb(h, pos_ids)
    for layer in lm.layers[start:end]:
        h = layer(h, attention_mask=None, position_ids=pos_ids, position_embeddings=cos_sin)
        if isinstance(h, tuple):
            h = h[0]
    return h


def head(model, h):
    _, lm, lm_head = _parts(model)
    return lm_head(lm.norm(h))


def forward_with_withdrawal(model, input_ids, pixel_values, ks, positions=(-1,), return_feats=False):
    """Logits at ``positions`` (indices into the FULL sequence, which must be non-vision
    positions) for the full model and for each withdrawal layer in ``ks``.

    All sequences in the batch must share the same layout (no padding): true for the
    fixed-length prompts used here. Returns ``(full_logits, {K: logits})`` with
    logits of shape (B, len(positions), V).
    """
    cfg = model.config
    L = cfg.text_config.num_hidden_layers
    B, T = input_ids.shape
    keep = (input_ids[0] != cfg.image_token_id).nonzero().squeeze(-1)
    assert bool(((input_ids == cfg.image_token_id) == (input_ids[:1] == cfg.image_token_id)).all())
    pos_full = torch.arange(T).unsqueeze(0).expand(B, T)
    pos_keep = keep.unsqueeze(0).expand(B, -1)
    positions = [p % T for p in positions]
    kept_index = {int(k): i for i, k in enumerate(keep.tolist())}
    pos_in_keep = [kept_index[p] for p in positions]

    h, feats = embed(model, input_ids, pixel_values, return_feats=True)
    ks = sorted(set(int(k) for k in ks))
    out = {}
    cur = 0
    for K in ks + [L]:
        h = run_layers(model, h, pos_full, cur, K)
        cur = K
        if K < L:
            hk = h.index_select(1, keep)
            hk = run_layers(model, hk, pos_keep, K, L)
            out[K] = head(model, hk[:, pos_in_keep])
        elif K == L and L in ks:
            pass
    full = head(model, h[:, positions])
    if L in ks:
        out[L] = full
    if return_feats:
        return full, out, feats
    return full, out
