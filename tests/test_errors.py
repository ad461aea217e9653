"""The error table (docs/errors.md), one CLI-level test per row.

Every user-facing error goes through the real CLI (``vtwcli.cli.main``) and must be ONE non-empty line
on stderr (what, where, what to do), exit code 2 for bad input, and no traceback.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from profile_fixtures import example_profile
from tiny_models import save_tiny_llava, tiny_processor

from vtwcli.cli import main
from cli_run import run_cli

torch.set_num_threads(1)

PHOTO = Path(__file__).resolve().parent.parent / "vtwcli" / "data" / "datasets" / "photo_vqa" / "images" / "chelsea.jpg"


# ---------------------------------------------------------------------------------------------- helpers


def one_line_error(args: list[str], capsys, *, code: int = 2) -> str:
    """Run the CLI, assert exit ``code``, exactly one non-empty stderr line and no traceback; return it."""
    got, _, err = run_cli(args, capsys)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code, f"exit {got}, stderr: {err}"
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), num_layers=4)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A folder with a small valid image set and helpers to write JSONL files next to it."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "images").mkdir()
    shutil.copy(PHOTO, folder / "images" / "cat.jpg")
    return folder


def write_jsonl(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    return path


def row(i: int, **extra) -> dict:
    base = {"id": f"s{i}", "image": "images/cat.jpg", "question": "What color is the cat?", "answer": "red"}
    base.update(extra)
    return base


def calibrate(model_dir: str, tmp_path: Path, *extra: str, dataset: str | Path = "photo_vqa") -> list[str]:
    return ["calibrate", "--model", str(model_dir), "--dataset", str(dataset), "--no-eval", "--samples", "2",
            "--device", "cpu", "--output", str(tmp_path / "c.yaml"), *extra]


def profile_profile(tmp_path: Path, data: dict | str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------ model


def test_model_path_that_does_not_exist(tmp_path, capsys):
    line = one_line_error(["calibrate", "--model", str(tmp_path / "no" / "such-model"), "--no-eval"], capsys)
    assert "no such directory" in line and "such-model" in line


def test_model_path_is_a_file(tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x")
    assert "is a file; pass the model directory" in one_line_error(["calibrate", "--model", str(path)], capsys)


def test_model_directory_without_config(tmp_path, capsys):
    line = one_line_error(["calibrate", "--model", str(tmp_path)], capsys)
    assert "has no config.json" in line


def test_model_directory_without_weights(model_dir, tmp_path, capsys):
    (tmp_path / "weightless").mkdir()
    shutil.copy(Path(model_dir) / "config.json", tmp_path / "weightless" / "config.json")
    line = one_line_error(calibrate(tmp_path / "weightless", tmp_path), capsys)
    assert "no loadable weights" in line and "save_pretrained" in line


def test_text_only_model(tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1)
    config.architectures = ["LlamaForCausalLM"]
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    line = one_line_error(calibrate(tmp_path, tmp_path), capsys)
    assert "LlamaForCausalLM is a text-only model" in line and "vtw models" in line


def test_architecture_without_an_adapter(tmp_path, capsys):
    # Mllama (Llama 3.2 Vision) is multimodal but cross-attention: no vtwcli adapter; the config alone decides
    # (no weights needed).
    from transformers import MllamaConfig

    from vtwcli.adapters import supported_architectures

    assert "MllamaForConditionalGeneration" not in supported_architectures()
    config = MllamaConfig()
    config.architectures = ["MllamaForConditionalGeneration"]
    config.save_pretrained(tmp_path)
    line = one_line_error(calibrate(tmp_path, tmp_path), capsys)
    assert "MllamaForConditionalGeneration has no vtwcli adapter (not applicable: cross-attention" in line
    assert "LlavaForConditionalGeneration" in line
    # vtw profile --flops-only refuses it the same way
    line = one_line_error(["profile", "--model", str(tmp_path), "--layer", "1", "--flops-only"], capsys)
    assert "has no vtwcli adapter" in line


def test_hub_id_while_offline(monkeypatch, tmp_path, capsys):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty cache: nothing to fall back on
    monkeypatch.chdir(tmp_path)  # `someorg/somemodel` must not resolve to a local folder
    line = one_line_error(["calibrate", "--model", "someorg/somemodel", "--no-eval"], capsys)
    assert "someorg/somemodel" in line and "network" in line and "local directory" in line


# ------------------------------------------------------------------------------------- device / dtype / attn


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_device_cuda_without_a_gpu(model_dir, tmp_path, capsys):
    line = one_line_error(["calibrate", "--model", model_dir, "--device", "cuda"], capsys)
    assert "no CUDA GPU" in line and "--device cpu" in line


def test_device_unknown_name(model_dir, capsys):
    line = one_line_error(["profile", "--model", model_dir, "--layer", "1", "--device", "tpu9"], capsys)
    assert "--device 'tpu9' is not a device name" in line


def test_dtype_float16_on_cpu(model_dir, tmp_path, capsys):
    line = one_line_error(calibrate(model_dir, tmp_path, "--dtype", "float16"), capsys)
    assert "float16 is not supported on cpu" in line and "bfloat16" in line


def test_dtype_unknown(model_dir, tmp_path, capsys):
    line = one_line_error(calibrate(model_dir, tmp_path, "--dtype", "float8"), capsys)
    assert "--dtype 'float8' is not supported" in line


def test_attn_unknown(model_dir, tmp_path, capsys):
    line = one_line_error(calibrate(model_dir, tmp_path, "--attn", "flash9"), capsys)
    assert "--attn 'flash9' is not supported; use sdpa or eager" in line
    line = one_line_error(["profile", "--model", model_dir, "--layer", "1", "--attn", "flash9"], capsys)
    assert "--attn 'flash9' is not supported" in line


# ------------------------------------------------------------------------------------- calibration options


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_threshold_negative_or_nan(model_dir, tmp_path, capsys, value):
    line = one_line_error(calibrate(model_dir, tmp_path, "--threshold", value), capsys)
    assert "--threshold must be a finite number >= 0" in line


def test_criterion_unknown(model_dir, tmp_path, capsys):
    line = one_line_error(calibrate(model_dir, tmp_path, "--criterion", "vibes"), capsys)
    assert "--criterion 'vibes' is unknown; use last_token or teacher_forced" in line


def test_min_layer_out_of_range(model_dir, tmp_path, capsys):
    assert "--min-layer 4 is out of range" in one_line_error(calibrate(model_dir, tmp_path, "--min-layer", "4"), capsys)


@pytest.mark.parametrize("samples,expected", [("0", "sample size must be at least 1"),
                                              ("999", "asked for 999 samples but dataset 'photo_vqa' has only")])
def test_samples_zero_or_more_than_the_data(model_dir, tmp_path, capsys, samples, expected):
    args = calibrate(model_dir, tmp_path)
    args[args.index("--samples") + 1] = samples
    assert expected in one_line_error(args, capsys)


# ------------------------------------------------------------------------------------------------ datasets


def test_unknown_bundled_dataset(model_dir, tmp_path, capsys):
    line = one_line_error(calibrate(model_dir, tmp_path, dataset="no_such_set"), capsys)
    assert "unknown dataset 'no_such_set'" in line and "photo_vqa" in line


def test_jsonl_not_found(model_dir, tmp_path, capsys):
    line = one_line_error(calibrate(model_dir, tmp_path, dataset=tmp_path / "missing.jsonl"), capsys)
    assert "dataset file not found" in line and "missing.jsonl" in line


def test_jsonl_empty(model_dir, data_dir, tmp_path, capsys):
    path = write_jsonl(data_dir / "empty.jsonl", [])
    line = one_line_error(calibrate(model_dir, tmp_path, dataset=path), capsys)
    assert f"{path}: the dataset is empty" in line


def test_jsonl_invalid_json_on_line_n(model_dir, data_dir, tmp_path, capsys):
    path = write_jsonl(data_dir / "broken.jsonl", [row(1), row(2), '{"id": "s3", "question": '])
    line = one_line_error(calibrate(model_dir, tmp_path, dataset=path), capsys)
    assert f"{path}:3: invalid JSON" in line


def test_jsonl_missing_field_on_line_n(model_dir, data_dir, tmp_path, capsys):
    bad = row(2)
    del bad["answer"]
    path = write_jsonl(data_dir / "noanswer.jsonl", [row(1), bad])
    line = one_line_error(calibrate(model_dir, tmp_path, dataset=path), capsys)
    assert f"{path}:2: missing field 'answer'" in line


def test_image_file_missing(model_dir, data_dir, tmp_path, capsys):
    path = write_jsonl(data_dir / "gone.jsonl", [row(1), row(2, image="images/gone.png")])
    line = one_line_error(calibrate(model_dir, tmp_path, dataset=path), capsys)
    assert f"{path}:2: image file not found" in line and "gone.png" in line


def test_image_file_corrupt(model_dir, data_dir, tmp_path, capsys):
    (data_dir / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    path = write_jsonl(data_dir / "corrupt.jsonl", [row(1), row(2, image="images/broken.png")])
    line = one_line_error(calibrate(model_dir, tmp_path, dataset=path), capsys)
    assert f"{path}:2" in line and "broken.png" in line and "corrupt" in line


def test_image_of_an_unsupported_mode(model_dir, data_dir, tmp_path, capsys):
    Image.new("I;16", (4, 4), 60000).save(data_dir / "images" / "deep.png")
    path = write_jsonl(data_dir / "deep.jsonl", [row(1), row(2, image="images/deep.png")])
    line = one_line_error(calibrate(model_dir, tmp_path, dataset=path), capsys)
    assert f"{path}:2" in line and "deep.png" in line and "has mode" in line and "RGB" in line


def test_prompt_without_vision_tokens(tmp_path, capsys):
    # A chat template that drops the image entry: the prompt reaches the model without vision tokens.
    directory = tmp_path / "no-image-template"
    save_tiny_llava(directory, num_layers=4)
    template = ("{% for message in messages %}{{ message['role'].upper() }}: {% for item in message['content'] %}"
                "{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
                "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    tiny_processor(chat_template=template).save_pretrained(directory)
    line = one_line_error(calibrate(directory, tmp_path), capsys)
    assert "no vision tokens" in line and "chat template" in line


# ------------------------------------------------------------------------------------------------- layers


@pytest.mark.parametrize("layer", ["0", "-1", "5"])
def test_layer_out_of_range(model_dir, capsys, layer):
    line = one_line_error(["profile", "--model", model_dir, "--layer", layer, "--flops-only"], capsys)
    assert f"--layer {layer}: out of range for this model with 4 decoder layers; use 1..4" in line


def test_layer_out_of_range_with_weights(model_dir, capsys):
    line = one_line_error(["profile", "--model", model_dir, "--layer", "9", "--device", "cpu"], capsys)
    assert "--layer 9: out of range" in line


def test_layer_not_an_integer_is_a_usage_error(model_dir, capsys):
    line = one_line_error(["profile", "--model", model_dir, "--layer", "1.5", "--flops-only"], capsys)
    assert "Invalid value for '--layer'" in line and "integer" in line and "vtw profile --help" in line


def test_unknown_option_and_missing_argument_are_one_line(capsys):
    line = one_line_error(["calibrate", "--thresold", "0.1"], capsys)
    assert "No such option: --thresold" in line and "--threshold" in line and "vtw calibrate --help" in line
    assert "Missing argument 'PROFILE...'" in one_line_error(["check"], capsys)


def test_no_layer_at_all(model_dir, capsys):
    assert "no withdrawal layer: pass --layer K" in one_line_error(["profile", "--model", model_dir], capsys)


# ------------------------------------------------------------------------- the synthetic prompt of `vtw profile`


@pytest.fixture(scope="module")
def next_dir(tmp_path_factory) -> str:
    """A saved tiny LLaVA-NeXT with its real processor: a family that sizes vision tokens from the image."""
    from arch_models import FAMILIES, save_family

    directory, shim = save_family(FAMILIES["llava_next"], tmp_path_factory.mktemp("tiny-next") / "m", num_layers=2)
    assert shim is None
    return directory


def test_flops_only_on_a_family_sized_by_its_images(tmp_path, capsys, monkeypatch):
    """Ovis2 sizes its tokens from each image (tiles + a global view); with its entry naming no vision-token rule
    (as an entry without one would: every listed family now has one, Llama 4 aside), --flops-only is refused."""
    import dataclasses

    from arch_models import FAMILIES

    from vtwcli import adapters

    entry = adapters.adapter_for_architecture(FAMILIES["ovis2"].architecture)
    monkeypatch.setattr(adapters, "ADAPTERS", tuple(dataclasses.replace(a, image_tokens=None) if a is entry else a
                                                    for a in adapters.ADAPTERS))
    model = FAMILIES["ovis2"].build(1, "sdpa", 0)
    model.config.architectures = [FAMILIES["ovis2"].architecture]
    model.config.save_pretrained(tmp_path)
    line = one_line_error(["profile", "--model", str(tmp_path), "--layer", "1", "--flops-only"], capsys)
    assert "Ovis2 sizes them from each image and has no rule yet" in line and "drop --flops-only" in line


def test_flops_only_without_preprocessor_config(next_dir, tmp_path, capsys):
    shutil.copy(Path(next_dir) / "config.json", tmp_path / "config.json")
    line = one_line_error(["profile", "--model", str(tmp_path), "--layer", "1", "--flops-only"], capsys)
    assert "--flops-only: LLaVA-NeXT sizes its vision tokens from each image, so it needs preprocessor_config.json " \
           "beside config.json" in line


def test_flops_only_with_videos(next_dir, capsys):
    line = one_line_error(["profile", "--model", next_dir, "--layer", "1", "--flops-only", "--videos", "1"], capsys)
    assert line == "error: --videos 1: LLaVA-NeXT takes no video input; drop --videos"


def test_flops_only_withdrawing_video_only(tmp_path, capsys):
    from arch_models import FAMILIES

    family = FAMILIES["llava_onevision"]
    model = family.build(1, "sdpa", 0)
    model.config.architectures = [family.architecture]
    model.config.save_pretrained(tmp_path)
    line = one_line_error(["profile", "--model", str(tmp_path), "--layer", "1", "--flops-only", "--withdraw", "video"],
                          capsys)
    assert line == ("error: --withdraw video: the synthetic prompt has no video (--videos 0), so nothing would be "
                    "withdrawn; add --videos N or change --withdraw")


def test_image_tokens_with_flops_only_on_a_sized_family(next_dir, capsys):
    line = one_line_error(["profile", "--model", next_dir, "--layer", "1", "--flops-only", "--image-tokens", "64"],
                          capsys)
    assert "--image-tokens: LLaVA-NeXT sizes the image tokens from each image" in line


def test_image_tokens_on_a_family_sized_by_its_images(next_dir, capsys):
    line = one_line_error(["profile", "--model", next_dir, "--layer", "1", "--image-tokens", "64", "--device", "cpu"],
                          capsys)
    assert "--image-tokens: LLaVA-NeXT sizes the image tokens from each image" in line and "--image-size" in line


def test_text_tokens_shorter_than_the_chat_template(next_dir, capsys):
    line = one_line_error(["profile", "--model", next_dir, "--layer", "1", "--text-tokens", "2", "--device", "cpu"],
                          capsys)
    assert line.startswith("error: --text-tokens 2: the chat template") and "use --text-tokens" in line


def test_fvcore_on_a_family_sized_by_its_images(next_dir, capsys):
    line = one_line_error(["profile", "--model", next_dir, "--layer", "1", "--fvcore", "--device", "cpu"], capsys)
    assert "--fvcore traces the LLaVA-1.5 forward" in line and "drop --fvcore" in line


@pytest.mark.parametrize("value", ["abc", "0x4", "3x", "-2"])
def test_malformed_image_size(model_dir, value, capsys):
    line = one_line_error(["profile", "--model", model_dir, "--layer", "1", "--image-size", value], capsys)
    assert f"--image-size {value!r}: use WxH" in line


def test_image_size_on_the_fixed_llava_layout(model_dir, capsys):
    line = one_line_error(["profile", "--model", model_dir, "--layer", "1", "--image-size", "64x64", "--device", "cpu"],
                          capsys)
    assert "LLaVA-1.5 resizes every image" in line and "drop --image-size" in line


def test_no_images(model_dir, capsys):
    line = one_line_error(["profile", "--model", model_dir, "--layer", "1", "--images", "0", "--device", "cpu"], capsys)
    assert "--images 0: the prompt needs at least 1 image" in line



# ------------------------------------------------------------------------------- --select and --samples auto


@pytest.mark.parametrize("value", ["median", "stable=1.5", "stable"])
def test_unknown_selection_rule(model_dir, tmp_path, capsys, value):
    line = one_line_error(calibrate(model_dir, tmp_path, "--select", value), capsys)
    assert f"--select {value!r} is not a selection rule; use mean, upper or stable=P with P in (0, 1]" in line


def test_samples_neither_a_count_nor_auto(model_dir, tmp_path, capsys):
    args = calibrate(model_dir, tmp_path)
    args[args.index("--samples") + 1] = "many"
    line = one_line_error(args, capsys)
    assert "--samples 'many' is not a sample count; use a positive integer (per dataset) or auto" in line


@pytest.mark.parametrize("option, value, expected", [
    ("--auto-target", "1.5", "--auto-target 1.5 is not a share; use a number in (0, 1]"),
    ("--auto-step", "0", "--auto-step 0: draw at least 1 sample per dataset per round"),
    ("--auto-budget", "0", "--auto-budget 0: allow at least 1 sample per dataset"),
])
def test_samples_auto_setting_out_of_range(model_dir, tmp_path, capsys, option, value, expected):
    args = calibrate(model_dir, tmp_path, option, value)
    args[args.index("--samples") + 1] = "auto"
    assert expected in one_line_error(args, capsys)


def test_auto_setting_without_samples_auto(model_dir, tmp_path, capsys):
    line = one_line_error(calibrate(model_dir, tmp_path, "--auto-step", "3"), capsys)
    assert "--auto-step only applies with --samples auto; add --samples auto or drop --auto-step" in line


# --------------------------------------------------------------------------------- --withdraw and videos


@pytest.mark.parametrize("value", ["audio", "image,,sound", ","])
def test_unknown_withdraw_kind(model_dir, tmp_path, value, capsys):
    line = one_line_error(calibrate(model_dir, tmp_path, "--withdraw", value), capsys)
    assert "--withdraw" in line and "use image, video or image,video" in line


def test_withdraw_a_kind_the_model_lacks(model_dir, tmp_path, capsys):
    line = one_line_error(calibrate(model_dir, tmp_path, "--withdraw", "video"), capsys)
    assert "--withdraw video: LLaVA-1.5 has no such tokens; its vision tokens are image" in line


def test_withdraw_a_kind_the_data_lacks(tmp_path, capsys, monkeypatch):
    from arch_models import FAMILIES, save_and_serve

    directory = save_and_serve(FAMILIES["qwen2_vl"], tmp_path / "qwen", monkeypatch, num_layers=2)
    capsys.readouterr()  # drop save_pretrained's progress output
    line = one_line_error(calibrate(directory, tmp_path, "--withdraw", "video"), capsys)
    assert "a calibration prompt has no video tokens to withdraw (--withdraw video)" in line


def test_withdraw_contradicts_the_profile(model_dir, tmp_path, capsys):
    data = example_profile()
    data["calibration"]["withdraw"] = ["image"]
    path = profile_profile(tmp_path, data)
    line = one_line_error(["profile", "--profile", str(path), "--model", model_dir, "--withdraw", "video"], capsys)
    assert "--withdraw video contradicts --profile" in line and "calibration.withdraw = image" in line


def test_video_frames_of_different_sizes(data_dir, tmp_path, capsys, monkeypatch):
    from arch_models import FAMILIES, save_and_serve

    # a model with video input
    directory = save_and_serve(FAMILIES["qwen2_vl"], tmp_path / "qwen", monkeypatch, num_layers=2)
    Image.new("RGB", (16, 16)).save(data_dir / "images" / "f0.png")
    Image.new("RGB", (20, 16)).save(data_dir / "images" / "f1.png")
    path = write_jsonl(data_dir / "frames.jsonl", [row(1, video=["images/f0.png", "images/f1.png"]), row(2)])
    capsys.readouterr()  # drop save_pretrained's progress output
    line = one_line_error(calibrate(directory, tmp_path, dataset=path), capsys)
    assert "frames.jsonl:1: the frames of a video differ in size (16x16, 20x16)" in line


@pytest.mark.parametrize("field, value", [("video", "images/f0.png"), ("video", []), ("videos", ["images/f0.png"])])
def test_malformed_video_field(data_dir, tmp_path, field, value, capsys):
    path = write_jsonl(data_dir / "badvideo.jsonl", [row(1, **{field: value})])
    line = one_line_error(["calibrate", "--dataset", str(path), "--output", str(tmp_path / "c.yaml")], capsys)
    assert f"badvideo.jsonl:1: field {field!r} must be" in line


def test_video_sample_for_a_model_without_video_input(model_dir, data_dir, tmp_path, capsys):
    Image.new("RGB", (16, 16)).save(data_dir / "images" / "g0.png")
    path = write_jsonl(data_dir / "video.jsonl", [row(1, video=["images/g0.png", "images/g0.png"]), row(2)])
    line = one_line_error(calibrate(model_dir, tmp_path, dataset=path), capsys)
    assert "video.jsonl:1: the sample has a video but LLaVA-1.5 takes no video input" in line


def test_withdraw_one_kind_where_deepstack_reaches_both(data_dir, tmp_path, capsys, monkeypatch):
    """Qwen3-VL adds DeepStack features to image and video tokens: --withdraw image on samples with a video
    would keep video tokens the candidates' layers >= K must leave without their injections."""
    from arch_models import FAMILIES, save_and_serve
    from test_architectures import write_video_dataset

    directory = save_and_serve(FAMILIES["qwen3_vl"], tmp_path / "model", monkeypatch)
    (tmp_path / "data").mkdir()
    dataset = write_video_dataset(tmp_path / "data")
    capsys.readouterr()  # saving the model showed a progress bar
    line = one_line_error(calibrate(directory, tmp_path, "--withdraw", "image", dataset=dataset), capsys)
    assert line == ("error: --withdraw image: Qwen3-VL / Qwen3-VL-MoE adds DeepStack vision features to every "
                    "vision token of the prompt, so all must be withdrawn; use --withdraw image,video or data "
                    "without the other kind")


def test_processor_that_needs_a_missing_library(model_dir, tmp_path, capsys, monkeypatch):
    """What a Qwen2-VL user without torchvision meets: transformers raises ImportError from the processor."""
    import transformers

    def missing(*args, **kwargs):
        raise ImportError("\nQwen2VLVideoProcessor requires the Torchvision library but it was not found in your "
                          "environment. Check out the instructions on the\ninstallation page: ...\n")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", missing)
    line = one_line_error(calibrate(model_dir, tmp_path), capsys)
    assert ("its processor cannot be built here (Qwen2VLVideoProcessor requires the Torchvision library but it was "
            "not found in your environment); install the torchvision build that matches your torch") in line


# ------------------------------------------------------------------------------------------------ outputs


def test_output_in_a_missing_directory(model_dir, tmp_path, capsys):
    args = calibrate(model_dir, tmp_path)
    args[args.index("--output") + 1] = str(tmp_path / "nope" / "c.yaml")
    line = one_line_error(args, capsys)
    assert f"directory {tmp_path / 'nope'} does not exist; create it or choose another --output" in line
    line = one_line_error(["profile", "--model", model_dir, "--layer", "2", "--flops-only",
                           "--output", str(tmp_path / "nope" / "p.yaml")], capsys)
    assert f"directory {tmp_path / 'nope'} does not exist" in line


def test_output_is_a_directory(model_dir, tmp_path, capsys):
    args = calibrate(model_dir, tmp_path)
    args[args.index("--output") + 1] = str(tmp_path)
    assert "is a directory; pass a file name" in one_line_error(args, capsys)
    line = one_line_error(["profile", "--model", model_dir, "--layer", "2", "--flops-only",
                           "--output", str(tmp_path)], capsys)
    assert "is a directory; pass a file name" in line


def test_output_in_a_read_only_directory(model_dir, tmp_path, capsys, monkeypatch):
    # We may run as root, where chmod does not block writes: simulate the refusal the OS would give.
    import vtwcli.atomic as atomic

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", denied)
    line = one_line_error(["profile", "--model", model_dir, "--layer", "2", "--flops-only",
                           "--output", str(tmp_path / "p.yaml")], capsys)
    assert "is not writable (Permission denied)" in line and "--output" in line
    monkeypatch.undo()
    monkeypatch.setattr(atomic.os, "replace", denied)
    line = one_line_error(["profile", "--model", model_dir, "--layer", "2", "--flops-only",
                           "--output", str(tmp_path / "p.yaml")], capsys)
    assert "cannot write" in line and "Permission denied" in line
    assert not (tmp_path / "p.yaml").exists()


def test_output_exists_without_force_in_profile(model_dir, tmp_path, capsys):
    (tmp_path / "p.yaml").write_text("keep\n")
    line = one_line_error(["profile", "--model", model_dir, "--layer", "2", "--flops-only",
                           "--output", str(tmp_path / "p.yaml")], capsys)
    assert "exists; pass --force" in line
    assert (tmp_path / "p.yaml").read_text() == "keep\n"


# ----------------------------------------------------------------------------------------------- profiles


def _profile_error(path: Path, capsys) -> tuple[str, str]:
    """The same broken profile through `vtw check` and `vtw profile --profile`."""
    checked = one_line_error(["check", str(path)], capsys)
    profiled = one_line_error(["profile", "--profile", str(path), "--flops-only"], capsys)
    return checked, profiled


def test_profile_corrupted_yaml(tmp_path, capsys):
    path = profile_profile(tmp_path, "schema_version: 1\nmodel: {name: [1, 2\nenvironment: x\n")
    for line in _profile_error(path, capsys):
        assert str(path) in line and "corrupted or truncated YAML at line" in line


def test_profile_truncated(tmp_path, capsys):
    text = yaml.safe_dump(example_profile(), sort_keys=False)
    path = profile_profile(tmp_path, text[: text.index("calibration:")])
    for line in _profile_error(path, capsys):
        assert "required key is missing" in line and str(path) in line


def test_profile_wrong_type(tmp_path, capsys):
    data = example_profile()
    data["calibration"]["threshold"] = "small"
    path = profile_profile(tmp_path, data)
    for line in _profile_error(path, capsys):
        assert "calibration.threshold: expected number, got string" in line


def test_profile_missing_key(tmp_path, capsys):
    data = example_profile()
    del data["model"]["config_sha256"]
    path = profile_profile(tmp_path, data)
    for line in _profile_error(path, capsys):
        assert "model.config_sha256: required key is missing" in line


def test_profile_newer_schema(tmp_path, capsys):
    data = example_profile()
    data["schema_version"] = 99
    path = profile_profile(tmp_path, data)
    for line in _profile_error(path, capsys):
        assert "schema_version 99" in line and "newer vtwcli" in line and "pip install -U vtwcli" in line


def test_profile_file_missing(tmp_path, capsys):
    for line in _profile_error(tmp_path / "nope.yaml", capsys):
        assert "no such profile file" in line


def test_profile_without_a_calibrated_layer(tmp_path, capsys):
    path = profile_profile(tmp_path, example_profile(layer=None))
    line = one_line_error(["profile", "--profile", str(path), "--flops-only"], capsys)
    assert "calibration.layer is null" in line and "--layer K" in line


# ------------------------------------------------------------------------------------------------ vtw eval

BUNDLED_PROFILE = Path(__file__).resolve().parent.parent / "profiles" / "bundled.yaml"


def vtw_eval(*extra: str, profile: Path = BUNDLED_PROFILE) -> list[str]:
    return ["eval", str(profile), "--model", "llava_hf", "--model-args", "pretrained=x", *extra]


def test_eval_of_the_plugin_model_itself(capsys):
    line = one_line_error(["eval", str(BUNDLED_PROFILE), "--model", "vtw", "--tasks", "mme"], capsys)
    assert "--model 'vtw': give the base lmms-eval model (e.g. llava_hf)" in line


def test_eval_without_tasks(capsys):
    assert "no --tasks given" in one_line_error(vtw_eval(), capsys)


def test_eval_model_args_with_a_plugin_key(capsys):
    line = one_line_error(vtw_eval("--tasks", "mme", "--model-args", "pretrained=x,profile=p.yaml"), capsys)
    assert "--model-args: profile is reserved for the vtw plugin; give the profile as vtw eval's PROFILE" in line


def test_eval_malformed_model_args(capsys):
    line = one_line_error(["eval", str(BUNDLED_PROFILE), "--model", "llava_hf", "--model-args", "pretrained",
                           "--tasks", "mme"], capsys)
    assert "--model-args 'pretrained': 'pretrained' is not key=value" in line


def test_eval_limit_below_one(capsys):
    assert "--limit must be >= 1, got 0" in one_line_error(vtw_eval("--tasks", "mme", "--limit", "0"), capsys)


def test_eval_dataset_with_include_path(tmp_path, capsys):
    line = one_line_error(vtw_eval("--dataset", "synthetic_color", "--include-path", str(tmp_path)), capsys)
    assert "--dataset and --include-path cannot be combined" in line


def test_eval_include_path_that_does_not_exist(tmp_path, capsys):
    line = one_line_error(vtw_eval("--tasks", "mme", "--include-path", str(tmp_path / "nope")), capsys)
    assert "--include-path" in line and "no such directory; pass the folder holding the task YAML files" in line


def test_eval_profile_without_a_layer(tmp_path, capsys):
    path = profile_profile(tmp_path, example_profile(layer=None), "nolayer.yaml")
    line = one_line_error(vtw_eval("--tasks", "mme", profile=path), capsys)
    assert "no withdrawal layer to evaluate" in line and "--threshold" in line


def test_eval_without_lmms_eval_installed(capsys):
    import importlib.util

    if importlib.util.find_spec("lmms_eval") is not None:
        pytest.skip("lmms-eval is installed here")
    line = one_line_error(vtw_eval("--tasks", "mme"), capsys)
    assert "lmms-eval is not installed in this environment; pip install 'vtwcli[lmms-eval]'" in line


# ---------------------------------------------------------------------------------------------- resources


@pytest.mark.parametrize("error", [MemoryError(), torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to "
                                                                               "allocate 2.00 GiB\nmore text")])
def test_out_of_memory_is_one_line_with_a_hint(model_dir, tmp_path, capsys, monkeypatch, error):
    import vtwcli.calibration

    def exhausted(*args, **kwargs):
        raise error

    monkeypatch.setattr(vtwcli.calibration, "shared_prefix_kl", exhausted)
    line = one_line_error(calibrate(model_dir, tmp_path), capsys)
    assert "out of memory" in line and "--batch-size" in line and "--dtype" in line and "--device-map" in line


def test_two_images_are_not_an_error_for_llava(model_dir, data_dir, tmp_path, capsys):
    """Not an error row: LLaVA takes several images per prompt, so a two-image sample calibrates."""
    path = write_jsonl(data_dir / "two.jsonl", [row(1, image=None, images=["images/cat.jpg", "images/cat.jpg"]),
                                               row(2)])
    code, _, err = run_cli(calibrate(model_dir, tmp_path, "--threshold", "1e9", dataset=path), capsys)
    assert code == 0, err
    assert not math.isnan(yaml.safe_load((tmp_path / "c.yaml").read_text())["calibration"]["per_layer"][0]["kl_mean"])


# ------------------------------------------------------------------------------------- vtw verify, --generic


def verify_args(model_dir: str, *extra: str) -> list[str]:
    return ["verify", "--model", str(model_dir), "--device", "cpu", "--samples", "2", "--new-tokens", "1", *extra]


def test_verify_not_exact(model_dir, capsys, monkeypatch):
    import dataclasses

    from vtwcli import adapters

    entry = adapters.adapter_for_architecture("LlavaForConditionalGeneration")
    wrong = dataclasses.replace(entry, vision_token_id_keys=("pad_token_id",))  # an ordinary token's id
    monkeypatch.setattr(adapters, "ADAPTERS", tuple(wrong if a is entry else a for a in adapters.ADAPTERS))
    line = one_line_error(verify_args(model_dir, "--layer", "2"), capsys, code=1)
    assert line.startswith("error: withdrawal is not exact on this model: vision tokens: ")
    assert ("the model put per-image vision features at token id(s) [3] (16 positions), which the adapter's vision "
            "token ids [0] leave out (they mark 0 tokens)") in line


def test_verify_layer_out_of_range(model_dir, capsys):
    line = one_line_error(verify_args(model_dir, "--layer", "4"), capsys)
    assert "--layer 4: verify withdraws at K in 1..3" in line


def test_verify_new_tokens_zero(model_dir, capsys):
    assert "--new-tokens 0: generate at least 1 token" in one_line_error(verify_args(model_dir, "--new-tokens", "0"),
                                                                         capsys)


def test_verify_batch_size_zero(model_dir, capsys):
    assert "--batch-size 0: use 1 or more" in one_line_error(verify_args(model_dir, "--batch-size", "0"), capsys)


def test_verify_output_of_another_model(model_dir, tmp_path, capsys):
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(example_profile()))
    line = one_line_error(verify_args(model_dir, "--layer", "2", "--output", str(other)), capsys)
    assert "is a profile of another model" in line and "choose another --output" in line


@pytest.fixture()
def no_derived(monkeypatch):
    from vtwcli import adapters

    monkeypatch.setattr(adapters, "DERIVED", {})


def test_generic_not_exact(tmp_path, capsys, monkeypatch, no_derived):
    from arch_models import save_and_serve
    from generic_models import PALIGEMMA, unlisted

    unlisted(monkeypatch, "PaliGemmaForConditionalGeneration")
    directory = save_and_serve(PALIGEMMA, tmp_path / "model", monkeypatch)
    capsys.readouterr()  # save_pretrained's own progress output is not the command's
    line = one_line_error(verify_args(directory, "--generic", "--layer", "1"), capsys, code=1)
    assert line.startswith("error: --generic: PaliGemmaForConditionalGeneration cannot be handled exactly with a "
                           "derived adapter: reference at K=1: max |logit difference|")


def _without_llava_entry(monkeypatch, change):
    """LLaVA as if it had no entry, its loaded model changed by ``change`` (a layout --generic cannot read)."""
    import transformers

    from generic_models import unlisted

    unlisted(monkeypatch, "LlavaForConditionalGeneration")
    original = transformers.AutoModelForImageTextToText.from_pretrained

    def load(*args, **kwargs):
        loaded = original(*args, **kwargs)  # (model, loading info) where vtwcli asks for the info
        change(loaded[0] if isinstance(loaded, tuple) else loaded)
        return loaded

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", load)


def test_generic_without_a_standard_decoder(model_dir, capsys, monkeypatch, no_derived):
    _without_llava_entry(monkeypatch, lambda model: setattr(model.model.language_model, "norm", None))
    line = one_line_error(verify_args(model_dir, "--generic"), capsys)
    assert "--generic: LlavaForConditionalGeneration has no standard text decoder" in line


def test_generic_without_vision_token_ids(model_dir, capsys, monkeypatch, no_derived):
    _without_llava_entry(monkeypatch, lambda model: setattr(model.config, "image_token_id", None))
    line = one_line_error(verify_args(model_dir, "--generic"), capsys)
    assert "--generic: LlavaForConditionalGeneration's config names no vision token id" in line


def test_generic_with_flops_only(model_dir, capsys):
    line = one_line_error(["profile", "--model", model_dir, "--layer", "2", "--flops-only", "--generic"], capsys)
    assert "--generic verifies the derived adapter on the model's weights first; drop --flops-only" in line


def test_debug_shows_the_traceback(tmp_path):
    from vtwcli.errors import VtwError

    with pytest.raises(VtwError, match="no such directory"):
        main(["--debug", "calibrate", "--model", str(tmp_path / "no" / "such-model")])


# ---------------------------------------------------------------------------------------------- families


def test_family_whose_forward_is_broken_upstream(tmp_path, capsys):
    # transformers 5.24's Llama4ForConditionalGeneration.forward fails on every call; the config alone decides
    import transformers
    from arch_models import tiny_llama4

    model = tiny_llama4(2)
    model.config.architectures = ["Llama4ForConditionalGeneration"]
    model.config.save_pretrained(tmp_path)
    for args in (calibrate(tmp_path, tmp_path), ["profile", "--model", str(tmp_path), "--layer", "1"]):
        line = one_line_error(args, capsys)
        assert f"Llama4ForConditionalGeneration.forward fails on every call in transformers " \
               f"{transformers.__version__} (upstream bug" in line
        assert "withdraw(model.language_model, layer=K, vision_mask=...)" in line


@pytest.fixture(scope="module")
def gemma4_dir(tmp_path_factory):
    """A saved tiny Gemma 4 whose last layer (3) reuses the keys/values of layer 2 (KV sharing)."""
    from arch_models import FAMILIES, save_family

    directory, _ = save_family(FAMILIES["gemma4"], tmp_path_factory.mktemp("gemma4"), num_layers=4)
    return directory


def test_min_layer_past_the_last_exact_layer(gemma4_dir, tmp_path, capsys, monkeypatch):
    import transformers
    from arch_models import FAMILIES

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *a, **k: FAMILIES["gemma4"].processor())
    line = one_line_error(calibrate(gemma4_dir, tmp_path, "--min-layer", "3"), capsys)
    assert "--min-layer 3: withdrawal is exact on this model only at layers 1..2, 4 (layer 3 reuses the keys/values " \
           "of layer 2, computed with the vision tokens (KV sharing)); use --min-layer in 1..2" in line


def test_layer_that_cannot_be_exact(gemma4_dir, capsys, monkeypatch):
    import transformers
    from arch_models import FAMILIES

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *a, **k: FAMILIES["gemma4"].processor())
    line = one_line_error(["profile", "--model", gemma4_dir, "--layer", "3", "--device", "cpu"], capsys)
    assert "withdrawal at layer 3 cannot be exact on this model: layer 3 reuses the keys/values of layer 2" in line
    assert line.endswith("use a layer in 1..2, 4 (4 = no withdrawal)")


def test_withdrawing_one_kind_keeps_bidirectional_blocks(gemma4_dir, data_dir, tmp_path, capsys, monkeypatch):
    import transformers
    from arch_models import FAMILIES

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *a, **k: FAMILIES["gemma4"].processor())
    for frame in range(2):
        Image.new("RGB", (16, 16), (frame * 90, 20, 40)).save(data_dir / "images" / f"g{frame}.png")
    frames = ["images/g0.png", "images/g1.png"]
    path = write_jsonl(data_dir / "gemma4_video.jsonl", [row(i, video=frames) for i in (1, 2)])
    expected = "withdrawing only image on Gemma 4 is not supported: the kept video tokens attend bidirectionally " \
               "inside their blocks, which layers >= K would not rebuild; withdraw image,video (the default)"
    assert expected in one_line_error(calibrate(gemma4_dir, tmp_path, "--withdraw", "image", dataset=path), capsys)
    # vtw profile with an image and a video in its prompt refuses it before measuring
    line = one_line_error(["profile", "--model", gemma4_dir, "--layer", "2", "--videos", "1", "--withdraw", "image",
                           "--device", "cpu"], capsys)
    assert expected in line


# -------------------------------------------------------------------------- threads, latency plan (#15)

@pytest.mark.parametrize("command", [["calibrate", "--output", "{tmp}/c.yaml"],
                                     ["profile", "--layer", "2", "--output", "{tmp}/p.yaml"],
                                     ["verify", "--output", "{tmp}/v.yaml"]])
def test_threads_below_one(model_dir, tmp_path, capsys, command):
    args = [part.format(tmp=tmp_path) for part in command] + ["--model", model_dir, "--threads", "0"]
    assert one_line_error(args, capsys) == "error: --threads 0: use 1 or more"
    assert not list(tmp_path.iterdir())


def test_max_time_below_min_time(model_dir, tmp_path, capsys):
    line = one_line_error(["profile", "--model", model_dir, "--layer", "2", "--min-time", "5", "--max-time", "1"],
                          capsys)
    assert line == "error: --max-time 1 is below --min-time 5; raise --max-time"


def test_ci_target_out_of_range(model_dir, tmp_path, capsys):
    line = one_line_error(["profile", "--model", model_dir, "--layer", "2", "--ci-target", "5"], capsys)
    assert line == "error: --ci-target 5: use a fraction between 0 and 1 (0.03 = +-3%)"
