"""The stand-in processors of tests/arch_models.py against the real transformers processors they stand in for.

Qwen3VLProcessor (Qwen3-VL, Qwen3.5), Glm4vProcessor (GLM-4.1V, GLM-4.5V), Glm46VProcessor (GLM-4.6V),
Gemma4Processor, Lfm2VlProcessor and Cohere2VisionProcessor need torchvision (a video processor, or a
torchvision-only image processor). Without it (the default CI) the architecture suites run those families on
stand-ins (``Qwen3VLInputs``, ``GlmInputs``, ``Gemma4Inputs``, ``Lfm2VlInputs``, ``Cohere2VisionInputs``);
with it they run on the real processors (.ci/real-processors). Here, where torchvision imports, both are built
by the family's own ``processor()`` (the stand-in with ``HAS_TORCHVISION`` off): the same image-processor
settings, tokenizer and chat template. On the family's test rows (images of several sizes, two in one row,
left padding across rows; the batch and each row alone) and, where the family has video, on a prompt with an
image and a 4-frame video, they must give the same inputs; the real processor is the reference.

Equal means ``torch.equal`` (same dtype and shape too), with two exceptions:

- Qwen3-VL / Qwen3.5 / GLM-4V video pixels: the stand-ins give random patches of the right shape (the suites
  pass them a count of videos, not frames), so ``pixel_values_videos`` is compared in shape and dtype only;
  ``video_grid_thw``, the ids (timestamps included) and the token types, which decide what is withdrawn and the
  M-RoPE positions, are compared exactly.
- Gemma 4 video pixels: the real video processor resizes the frames with torchvision (bicubic, on uint8), the
  stand-in runs them through the PIL image processor (PIL's bicubic), which lands at most one level of 255
  away (about 0.1 % of the values here): ``allclose`` with ``atol=1/255`` (plus float rounding). The frames' soft-token counts, positions and layout are exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import arch_models
from arch_models import FAMILIES, ShimProcessor, family_batch, image

if not arch_models.HAS_TORCHVISION:
    pytest.skip("the real processors need torchvision (.ci/real-processors runs this module)", allow_module_level=True)

FAMILY_NAMES = ["qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "glm4v", "glm4v_moe", "glm46v", "gemma4",
                "lfm2_vl", "cohere2_vision"]
REAL = {"qwen3_vl": "Qwen3VLProcessor", "qwen3_vl_moe": "Qwen3VLProcessor", "qwen3_5": "Qwen3VLProcessor",
        "qwen3_5_moe": "Qwen3VLProcessor", "glm4v": "Glm4vProcessor", "glm4v_moe": "Glm4vProcessor",
        "glm46v": "Glm46VProcessor", "gemma4": "Gemma4Processor", "lfm2_vl": "Lfm2VlProcessor",
        "cohere2_vision": "Cohere2VisionProcessor"}
# A prompt with an image and a video, per family with video (the placeholders of its chat template)
QWEN_PAD = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_PROMPTS = {
    "qwen": f"<|im_start|>user\ndescribe {QWEN_PAD} and <|vision_start|><|video_pad|><|vision_end|> this video ?"
            "<|im_end|>\n<|im_start|>assistant\n",
    "glm": "<|user|>\ndescribe <|begin_of_image|><|image|><|end_of_image|> and "
           "<|begin_of_video|><|video|><|end_of_video|> this video ?\n<|assistant|>\n",
    "gemma4": "<|turn>user\ndescribe <|image|> and <|video|> this video ?<turn|>\n<|turn>model\n",
}
VIDEO_FAMILIES = {"qwen3_vl": "qwen", "qwen3_5": "qwen", "glm4v": "glm", "glm46v": "glm", "gemma4": "gemma4"}


def processors(name: str, monkeypatch) -> tuple[object, object]:
    """(stand-in, real processor) of a family, both from its ``processor()``."""
    real = FAMILIES[name].processor()
    with monkeypatch.context() as patch:
        patch.setattr(arch_models, "HAS_TORCHVISION", False)
        standin = FAMILIES[name].processor()
    assert isinstance(standin, ShimProcessor) and type(real).__name__ == REAL[name]
    return standin, real


def assert_same_inputs(standin: dict, real: dict, approximate: dict | None = None) -> None:
    """Same keys; each tensor equal (same dtype, shape, values) unless ``approximate`` says how it may differ:
    "shape" (shape and dtype only) or an absolute tolerance."""
    approximate = approximate or {}
    assert sorted(standin) == sorted(real)
    for key, expected in real.items():
        got = standin[key]
        assert got.dtype == expected.dtype and got.shape == expected.shape, key
        if key not in approximate:
            assert torch.equal(got, expected), key
        elif approximate[key] != "shape":
            torch.testing.assert_close(got, expected, atol=approximate[key], rtol=0, msg=key)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_standin_prepares_the_real_processors_inputs_for_the_test_rows(name, monkeypatch):
    standin, real = processors(name, monkeypatch)
    standin_batch, standin_rows = family_batch(FAMILIES[name], standin)
    real_batch, real_rows = family_batch(FAMILIES[name], real)
    assert_same_inputs(standin_batch, real_batch)
    assert len(standin_rows) == len(real_rows) > 1
    for standin_row, real_row in zip(standin_rows, real_rows):
        assert_same_inputs(standin_row, real_row)
    # the rows differ: two images in one row, images of other sizes, so left padding in the batch
    lengths = real_batch["attention_mask"].sum(-1)
    assert lengths.min() < lengths.max() and real_batch["attention_mask"][:, 0].min() == 0


@pytest.mark.parametrize("name", list(VIDEO_FAMILIES))
def test_standin_prepares_the_real_processors_inputs_for_an_image_and_a_video(name, monkeypatch):
    standin, real = processors(name, monkeypatch)
    kind = VIDEO_FAMILIES[name]
    frames = np.random.default_rng(9).integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
    call = dict(text=[VIDEO_PROMPTS[kind]], images=[[image(24, 16, 5)]], videos=[frames], return_tensors="pt")
    got, expected = dict(standin(**call)), dict(real(**call))
    approximate = {"pixel_values_videos": 1 / 255 + 1e-6 if kind == "gemma4" else "shape"}
    assert_same_inputs(got, expected, approximate)
    types = expected["mm_token_type_ids"][0]
    assert (types == 1).sum() > 0 and (types == 2).sum() > 0  # image and video tokens both there
