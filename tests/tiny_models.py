"""Tiny randomly initialised models built from configs (no hub), shared by the tests."""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

IMAGE_TOKEN_ID = 3
VOCAB = 64
IMAGE_SIZE = 16
PATCH = 4
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH) ** 2  # CLS dropped by the "default" feature strategy


def tiny_llava_config(num_layers: int = 4, attn: str = "sdpa") -> LlavaConfig:
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=32)
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID,
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    config._attn_implementation = attn
    return config


def tiny_llava(num_layers: int = 4, attn: str = "sdpa", seed: int = 0) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(tiny_llava_config(num_layers, attn))
    model.config.pad_token_id = 0
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None  # random weights: never stop early, compare whole runs
    # a generated image token would be read as a vision token by the no-cache references
    model.generation_config.suppress_tokens = [IMAGE_TOKEN_ID]
    return model.eval()


def image_prompt(text_before: list[int], images: int, text_after: list[int]) -> list[int]:
    ids = list(text_before)
    for _ in range(images):
        ids += [IMAGE_TOKEN_ID] * TOKENS_PER_IMAGE + [5]
    return ids + list(text_after)


def left_padded_batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask


def pixel_values(num_images: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_images, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)


CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% else %}{{ item['text'] }}"
    "{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def tiny_processor(chat_template: str | None = CHAT_TEMPLATE):
    """A LlavaProcessor built locally: CLIP image processor + a word-level tokenizer whose id 3 is <image>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<image>", "<unk>", "USER", "ASSISTANT", ":", "?", ".", "what", "color", "is",
             "the", "red", "blue", "green", "how", "many", "a", "b", "c", "d", "answer", "with", "option's", "letter"]
    words += [f"w{i}" for i in range(VOCAB - len(words))]
    vocab = {w: i for i, w in enumerate(words[:VOCAB])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>", padding_side="left",
                                        extra_special_tokens={"image_token": "<image>"})
    images = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=PATCH,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=chat_template)


def save_tiny_llava(directory, num_layers: int = 4, attn: str = "sdpa") -> str:
    """A tiny LLaVA + processor saved with save_pretrained, as a user's local model directory."""
    model = tiny_llava(num_layers, attn)
    model.config.architectures = ["LlavaForConditionalGeneration"]
    model.save_pretrained(directory)
    tiny_processor().save_pretrained(directory)
    return str(directory)
