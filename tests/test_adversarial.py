"""The adversarial pass of issue 14 (docs/errors.md, rows 66 on and "The adversarial pass"), one test per find.

Every case runs the real CLI (``vtwcli.cli.main``): bad input is ONE line on stderr, exit 2 (1 for a failed
check, 130 for an interrupt), no traceback, no hang, no silently wrong result and no clobbered file. Checks
that must happen before the model loads run with ``load_model`` replaced by a tripwire.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from profile_fixtures import example_profile
from test_errors import PHOTO, model_dir, one_line_error, run_cli, write_jsonl  # noqa: F401 (model_dir: a fixture)
from arch_models import HAS_TORCHVISION
from tiny_models import save_tiny_llava, tiny_llava, tiny_processor

from vtwcli.cli import _debug_first, main
from vtwcli.cli._render import json_text
from vtwcli.errors import VtwError
from vtwcli.profile import dump_profile_yaml

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two folders holding a dataset file of the same name (set.jsonl) with different questions."""
    root = tmp_path_factory.mktemp("data")
    for folder, words in (("a", "what color is the"), ("b", "how many a b c d")):
        (root / folder / "images").mkdir(parents=True)
        (root / folder / "images" / "cat.jpg").write_bytes(PHOTO.read_bytes())
        write_jsonl(root / folder / "set.jsonl",
                    [{"id": f"s{i}", "image": "images/cat.jpg", "question": f"{words} {'w1 ' * i}?", "answer": "red"}
                     for i in range(3)])
    return root


@pytest.fixture
def no_model_load(monkeypatch):
    """Reaching load_model fails the test: what is checked here must be checked before the model loads."""
    def tripwire(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr("vtwcli.loading.load_model", tripwire)


def calibrate_args(model_dir, output: Path, *extra, dataset=None) -> list[str]:
    args = ["calibrate", "--model", str(model_dir), "--no-eval", "--output", str(output)]
    for item in ([dataset] if isinstance(dataset, (str, Path)) else dataset or []):
        args += ["--dataset", str(item)]
    return args + list(extra)


def profile_file(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD = dump_profile_yaml(example_profile())


# ---------------------------------------------------------------------------------------------- datasets


def test_same_named_datasets_keep_their_own_batches(model_dir, data, tmp_path, capsys):
    both = tmp_path / "both.yaml"
    assert run_cli(calibrate_args(model_dir, both, "--json", dataset=[data / "a" / "set.jsonl",
                                                                       data / "b" / "set.jsonl"]), capsys)[0] == 0
    alone = tmp_path / "b.yaml"
    assert run_cli(calibrate_args(model_dir, alone, dataset=data / "b" / "set.jsonl"), capsys)[0] == 0
    rows = yaml.safe_load(both.read_text())["calibration"]["per_sample"]
    reference = yaml.safe_load(alone.read_text())["calibration"]["per_sample"]
    flat = [v for r in rows[3:] for v in r["kl"]]
    assert flat == pytest.approx([v for r in reference for v in r["kl"]], rel=1e-5)
    assert rows[0]["kl"] != pytest.approx(rows[3]["kl"], rel=1e-3)  # the two sets really differ


def test_same_dataset_file_twice(model_dir, data, tmp_path, capsys, no_model_load):
    again = data / "a" / ".." / "a" / "set.jsonl"
    line = one_line_error(calibrate_args(model_dir, tmp_path / "c.yaml", dataset=[data / "a" / "set.jsonl", again]),
                          capsys)
    assert "names the same file" in line and "pass each dataset once" in line


def test_question_longer_than_the_context(model_dir, data, tmp_path, capsys):
    long = write_jsonl(data / "a" / "long.jsonl", [{"id": "s0", "image": "images/cat.jpg", "question": "what " * 300,
                                                    "answer": "red"}])
    line = one_line_error(calibrate_args(model_dir, tmp_path / "c.yaml", dataset=long), capsys)
    assert f"{long}:1" in line and "context of 256 tokens" in line and "max_position_embeddings" in line
    assert not list(tmp_path.iterdir())  # refused before any work: no checkpoint, no profile


def test_ids_and_texts_at_the_edges_are_kept_exactly(model_dir, data, tmp_path, capsys):
    ids = ["x" * 5000, "line\nbreak\u2028sep", "\u202eright-to-left", "emoji \U0001f408 and \x7f", " lead", "0"]
    jsonl = write_jsonl(data / "a" / "edges.jsonl", [{"id": i, "image": "images/cat.jpg", "question": q, "answer": a}
                                                     for i, q, a in zip(ids, ["what \u00e9\u00e8 ?", "?", "a\tb",
                                                                              "\u0000?", "what", "w1"],
                                                                        ["red", "\u00e9", "1e9", "null", "yes", "0"])])
    output = tmp_path / "edges.yaml"
    assert run_cli(calibrate_args(model_dir, output, dataset=jsonl), capsys)[0] == 0
    recorded = yaml.safe_load(output.read_text(encoding="utf-8"))["calibration"]["per_sample"]
    assert [row["id"] for row in recorded] == [i.strip() for i in ids]  # the parser strips surrounding blanks
    assert run_cli(["check", str(output)], capsys)[0] == 0


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_image_that_is_not_a_regular_file(model_dir, data, tmp_path, capsys, kind, no_model_load):
    target = data / "a" / "images" / f"{kind}.png"
    if not os.path.lexists(target):
        {"fifo": os.mkfifo, "directory": os.mkdir, "device": lambda p: os.symlink("/dev/zero", p)}[kind](target)
    jsonl = write_jsonl(tmp_path / "set.jsonl", [{"id": "s0", "image": str(target), "question": "what?",
                                                  "answer": "red"}])
    line = one_line_error(calibrate_args(model_dir, tmp_path / "c.yaml", dataset=jsonl), capsys)
    expected = {"fifo": "is a FIFO", "directory": "is a directory", "device": "is a character device"}[kind]
    assert expected in line and "not a regular file" in line and "not found" not in line


@pytest.mark.parametrize("kind", ["fifo", "device", "under a file"])
def test_dataset_path_that_is_not_a_regular_file(model_dir, tmp_path, capsys, kind, no_model_load):
    if kind == "fifo":
        path = tmp_path / "set.jsonl"
        os.mkfifo(path)
    elif kind == "device":
        path = Path("/dev/null")
    else:
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "set.jsonl"
    line = one_line_error(calibrate_args(model_dir, tmp_path / "c.yaml", dataset=path), capsys)
    expected = {"fifo": "is a FIFO", "device": "is a character device",
                "under a file": "which is a file, not a directory"}
    assert "not found" not in line and expected[kind] in line


# ------------------------------------------------------------------------------------------ model directories


def _broken_copy(model_dir: str, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    target.mkdir()
    for item in Path(model_dir).iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    return target


@pytest.mark.parametrize("cut", ["empty", "header", "body"])
def test_truncated_or_empty_weights(model_dir, data, tmp_path, capsys, cut):
    broken = _broken_copy(model_dir, tmp_path)
    weights = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes({"empty": b"", "header": weights[:100],
                                                "body": weights[:len(weights) // 2]}[cut])
    line = one_line_error(calibrate_args(broken, tmp_path / "c.yaml", dataset=data / "a" / "set.jsonl"), capsys)
    assert "truncated or corrupt" in line and "safetensors" in line


@pytest.mark.parametrize("change", ["drop a layer's weights", "config with more layers"])
def test_weights_missing_for_the_config(model_dir, data, tmp_path, capsys, change):
    from safetensors.torch import load_file, save_file

    broken = _broken_copy(model_dir, tmp_path)
    if change == "drop a layer's weights":
        tensors = load_file(broken / "model.safetensors")
        save_file({k: v for k, v in tensors.items() if ".layers.3." not in k}, broken / "model.safetensors",
                  metadata={"format": "pt"})
    else:
        config = json.loads((broken / "config.json").read_text())
        config["text_config"]["num_hidden_layers"] = 6
        (broken / "config.json").write_text(json.dumps(config))
    line = one_line_error(calibrate_args(broken, tmp_path / "c.yaml", dataset=data / "a" / "set.jsonl"), capsys)
    assert "the weights lack" in line and ("layers.3." if change.startswith("drop") else "layers.4.") in line
    assert "do not match config.json" in line


def test_weights_of_another_shape(model_dir, data, tmp_path, capsys):
    broken = _broken_copy(model_dir, tmp_path)
    config = json.loads((broken / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 48
    (broken / "config.json").write_text(json.dumps(config))
    line = one_line_error(calibrate_args(broken, tmp_path / "c.yaml", dataset=data / "a" / "set.jsonl"), capsys)
    assert "do not match config.json (tensor shapes differ)" in line


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickled_weights_load_safely_or_are_refused(model_dir, data, tmp_path, capsys):
    from safetensors.torch import load_file

    plain = _broken_copy(model_dir, tmp_path)  # tensors only: torch.load(weights_only=True) loads them
    tensors = load_file(plain / "model.safetensors")
    (plain / "model.safetensors").unlink()
    torch.save(tensors, plain / "pytorch_model.bin")
    assert run_cli(calibrate_args(plain, tmp_path / "plain.yaml", dataset=data / "a" / "set.jsonl"), capsys)[0] == 0

    evil = tmp_path / "evil"
    evil.mkdir()
    for item in plain.iterdir():
        (evil / item.name).write_bytes(item.read_bytes())
    torch.save({"x": _RunsCode()}, evil / "pytorch_model.bin")
    line = one_line_error(calibrate_args(evil, tmp_path / "evil.yaml", dataset=data / "a" / "set.jsonl"), capsys)
    assert "hold objects other than tensors and were refused" in line
    assert not Path("pwned").exists()


@pytest.mark.parametrize("which", ["config.json", "model.safetensors", "tokenizer.json", "the --model path"])
def test_model_file_that_is_a_fifo(model_dir, data, tmp_path, capsys, which):
    if which == "the --model path":
        broken = tmp_path / "model"
        os.mkfifo(broken)
    else:
        broken = _broken_copy(model_dir, tmp_path)
        (broken / which).unlink()
        os.mkfifo(broken / which)
    line = one_line_error(calibrate_args(broken, tmp_path / "c.yaml", dataset=data / "a" / "set.jsonl"), capsys)
    assert "is a FIFO (named pipe)" in line and (which in line or which.startswith("the"))


def test_model_path_under_a_file(tmp_path, capsys, no_model_load):
    (tmp_path / "file").write_text("x")
    line = one_line_error(["profile", "--model", str(tmp_path / "file" / "model"), "--layer", "1", "--flops-only"],
                          capsys)
    assert f"is under {tmp_path / 'file'}, which is a file, not a directory" in line and "no such" not in line


def test_one_layer_model(tmp_path, data, capsys):
    one = save_tiny_llava(tmp_path / "one", num_layers=1)
    line = one_line_error(calibrate_args(one, tmp_path / "c.yaml", dataset=data / "a" / "set.jsonl"), capsys)
    assert "the model has 1 decoder layer; calibration needs at least 2" in line and "1..0" not in line


def test_model_whose_outputs_are_not_finite(tmp_path, data, capsys):
    model = tiny_llava(4)
    with torch.no_grad():
        model.model.language_model.layers[3].mlp.down_proj.weight.fill_(float("inf"))
    model.config.architectures = ["LlavaForConditionalGeneration"]
    model.save_pretrained(tmp_path / "inf")
    tiny_processor().save_pretrained(tmp_path / "inf")
    line = one_line_error(calibrate_args(tmp_path / "inf", tmp_path / "c.yaml", dataset=data / "a" / "set.jsonl"),
                          capsys)
    assert "is not a finite number" in line and "--dtype float32" in line
    assert not (tmp_path / "c.yaml.partial.jsonl").exists()  # the failed run leaves nothing behind


# ---------------------------------------------------------------------------------------------- profiles


def test_profile_with_an_alias_bomb(model_dir, tmp_path, capsys):
    levels = ["  l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = profile_file(tmp_path, GOOD + "extra:\n" + "\n".join(levels) + "\n")
    started = time.perf_counter()
    line = one_line_error(["check", str(bomb)], capsys)
    assert "anchor/alias" in line and "never use them" in line
    line = one_line_error(["profile", "--profile", str(bomb), "--model", model_dir, "--flops-only"], capsys)
    assert "anchor/alias" in line
    assert time.perf_counter() - started < 30  # refused before expanding 10**9 leaves


@pytest.mark.parametrize("old,new,expected", [
    ("kl_mean: 0.002", "kl_mean: .nan", "calibration.per_layer[4].kl_mean: nan is not a finite number"),
    ("threshold: 0.003", "threshold: .inf", "calibration.threshold: inf is not a finite number"),
    ("num_layers: 8", "num_layers: 100000000000", "model.num_layers: expected a value <= 100000"),
    ("  layer: 5\n", "  layer: 1000000000000000000000\n", "calibration.layer: expected a value <= 100000"),
    ("  layer: 5\n", "  layer: " + "9" * 5000 + "\n", "an integer of more than 4300 digits"),
])
def test_profile_with_absurd_or_non_finite_values(tmp_path, capsys, old, new, expected):
    assert old in GOOD
    path = profile_file(tmp_path, GOOD.replace(old, new, 1))
    assert expected in one_line_error(["check", str(path)], capsys)
    assert expected in one_line_error(["compare", str(path), str(profile_file(tmp_path, GOOD, "good.yaml")),
                                       "--json"], capsys)


def test_profile_that_is_a_fifo(tmp_path, capsys):
    os.mkfifo(tmp_path / "p.yaml")
    line = one_line_error(["check", str(tmp_path / "p.yaml")], capsys)
    assert f"{tmp_path / 'p.yaml'}: a FIFO (named pipe), not a regular file" in line


def test_profile_too_large_to_be_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("vtwcli.profile.files.MAX_PROFILE_BYTES", len(GOOD) - 1)
    line = one_line_error(["check", str(profile_file(tmp_path, GOOD))], capsys)
    assert "is too large for a profile" in line


# ------------------------------------------------------------------------------- options, checked up front


@pytest.mark.parametrize("args,expected", [
    (["--seed", "-1"], "--seed -1: use an integer in 0..4294967295"),
    (["--seed", str(2 ** 32)], "use an integer in 0..4294967295"),
    (["--eval", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--threshold", "inf"], "--threshold must be a finite number >= 0, got inf"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--min-layer", "0"], "--min-layer 0: the first candidate layer is 1 or more"),
])
def test_calibrate_options_refused_before_the_model_loads(model_dir, data, tmp_path, capsys, no_model_load, args,
                                                          expected):
    line = one_line_error(calibrate_args(model_dir, tmp_path / "c.yaml", *args, dataset=data / "a" / "set.jsonl"),
                          capsys)
    assert expected in line
    assert not list(tmp_path.iterdir())  # and no checkpoint that would block the corrected command


def test_plot_path_refused_before_the_model_loads(model_dir, data, tmp_path, capsys, no_model_load):
    line = one_line_error(calibrate_args(model_dir, tmp_path / "c.yaml", "--plot", str(tmp_path / "no" / "kl.png"),
                                         dataset=data / "a" / "set.jsonl"), capsys)
    assert f"--plot {tmp_path / 'no' / 'kl.png'}: directory" in line and "does not exist" in line


@pytest.mark.parametrize("args,expected", [
    (["--new-tokens", "1"], "decode timing needs at least 2 new tokens"),
    (["--min-time", "nan"], "--min-time finite and >= 0"),
    (["--min-runs", "0"], "--min-runs must be >= 1"),
    (["--threads", "0"], "--threads 0: use 1 or more"),
    (["--seed", "-1"], "--seed -1: use an integer"),
])
def test_profile_options_refused_before_the_model_loads(model_dir, capsys, no_model_load, args, expected):
    assert expected in one_line_error(["profile", "--model", model_dir, "--layer", "2", *args], capsys)


@pytest.mark.parametrize("args", [["--text-tokens", "100000"], ["--images", "1000000"]])
def test_synthetic_prompt_longer_than_the_context(model_dir, capsys, args):
    line = one_line_error(["profile", "--model", model_dir, "--layer", "2", "--flops-only", *args], capsys)
    assert "more than the model's context of 256 tokens" in line


@settings(max_examples=80, deadline=None)
@given(st.one_of(st.text(max_size=12), st.from_regex(r"-?[0-9]{1,6}(x-?[0-9]{1,6})?", fullmatch=True)))
def test_image_size_parser_gives_a_size_or_one_line(text):
    from vtwcli.cli.profile_cmd import MAX_IMAGE_SIDE, _parse_image_size

    try:
        width, height = _parse_image_size(text)
    except VtwError as error:
        assert "\n" not in str(error) and str(error).startswith("--image-size")
    else:
        assert 1 <= width <= MAX_IMAGE_SIDE and 1 <= height <= MAX_IMAGE_SIDE


def test_image_size_too_large_to_hold(model_dir, capsys, no_model_load):
    assert "a side of at most 8192 pixels" in one_line_error(["profile", "--model", model_dir, "--layer", "2",
                                                              "--image-size", "100000"], capsys)


# ---------------------------------------------------------------------------------------------- checkpoints


def test_failed_run_leaves_no_checkpoint_to_block_the_corrected_command(model_dir, data, tmp_path, capsys,
                                                                        monkeypatch):
    import vtwcli.calibration as calibration

    real, calls = calibration.shared_prefix_kl, []

    def fails_on_the_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise VtwError("the processor rejected the batch (s1): simulated")
        return real(*args, **kwargs)

    monkeypatch.setattr(calibration, "shared_prefix_kl", fails_on_the_second_batch)
    args = calibrate_args(model_dir, tmp_path / "c.yaml", "--batch-size", "1", dataset=data / "a" / "set.jsonl")
    assert "simulated" in one_line_error(args, capsys)
    assert not (tmp_path / "c.yaml.partial.jsonl").exists()
    monkeypatch.setattr(calibration, "shared_prefix_kl", real)
    assert run_cli(args, capsys)[0] == 0  # the corrected run needs no --force


def _interrupted_checkpoint(model_dir, data, tmp_path, capsys, monkeypatch, output: Path) -> list[str]:
    """Run calibrate with batch size 1 until its first batch is saved, then 'press Ctrl-C'."""
    from vtwcli.checkpoint import CheckpointStore

    real = CheckpointStore.put

    def put_then_interrupt(self, key, value):
        real(self, key, value)
        raise KeyboardInterrupt

    args = calibrate_args(model_dir, output, "--batch-size", "1", dataset=data / "a" / "set.jsonl")
    monkeypatch.setattr(CheckpointStore, "put", put_then_interrupt)
    code, _, err = run_cli(args, capsys)  # (a note on stderr when it writes beside an existing output)
    assert code == 130 and "Traceback" not in err and err.strip().splitlines()[-1].endswith("plus --resume")
    monkeypatch.setattr(CheckpointStore, "put", real)
    return args


@pytest.mark.parametrize("damage,expected", [
    (lambda lines: ["garbage"], "is corrupt or not a vtwcli checkpoint"),
    (lambda lines: None, "is corrupt (not UTF-8 text)"),
    (lambda lines: lines[:1] + ['{"key": "kl/0/set/0"}', lines[1]], "the record is not one of this run's batches"),
    (lambda lines: lines[:1] + ["[1, 2]", lines[1]], "the record is not one of this run's batches"),
    (lambda lines: lines[:1] + ["not json", lines[1]], ":2: corrupt record (not JSON)"),
    (lambda lines: [lines[0], lines[1].replace('"kl": [[', '"kl": [[0.5], [')], "2 rows for a batch of 1 samples"),
    (lambda lines: [lines[0], lines[1].replace('"work_full": ', '"work_full": -')], "bad work counts"),
])
def test_corrupt_or_foreign_checkpoint_with_resume(model_dir, data, tmp_path, capsys, monkeypatch, damage, expected):
    output = tmp_path / "c.yaml"
    args = _interrupted_checkpoint(model_dir, data, tmp_path, capsys, monkeypatch, output)
    checkpoint = tmp_path / "c.yaml.partial.jsonl"
    lines = damage(checkpoint.read_text().splitlines())
    checkpoint.write_bytes(b"\xff\xfe\x00garbage" if lines is None else ("\n".join(lines) + "\n").encode())
    line = one_line_error(args + ["--resume"], capsys)
    assert expected in line and "--force" in line


def test_resume_after_the_run_wrote_beside_an_existing_output(model_dir, data, tmp_path, capsys, monkeypatch):
    output = tmp_path / "c.yaml"
    output.write_text("keep me\n")
    args = _interrupted_checkpoint(model_dir, data, tmp_path, capsys, monkeypatch, output)
    assert (tmp_path / "c-1.yaml.partial.jsonl").exists()
    assert run_cli(args + ["--resume"], capsys)[0] == 0
    assert output.read_text() == "keep me\n" and (tmp_path / "c-1.yaml").exists()
    assert not (tmp_path / "c-1.yaml.partial.jsonl").exists()


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_checkpoint_path_that_is_not_a_regular_file(model_dir, data, tmp_path, capsys, no_model_load, kind):
    precious = tmp_path / "precious.txt"
    precious.write_text("precious\n")
    checkpoint = tmp_path / "c.yaml.partial.jsonl"
    checkpoint.symlink_to(precious) if kind == "symlink" else checkpoint.mkdir()
    line = one_line_error(calibrate_args(model_dir, tmp_path / "c.yaml", "--force", dataset=data / "a" / "set.jsonl"),
                          capsys)
    assert f"checkpoint {checkpoint} is a {'symbolic link' if kind == 'symlink' else 'directory'}" in line
    assert precious.read_text() == "precious\n" and os.path.lexists(checkpoint)


# ---------------------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "link to /dev/null", "fifo"])
def test_output_that_is_not_a_regular_file(model_dir, data, tmp_path, capsys, no_model_load, kind):
    precious = tmp_path / "precious.txt"
    precious.write_text("precious\n")
    output = tmp_path / "out.yaml"
    {"symlink": lambda: output.symlink_to(precious),
     "dangling symlink": lambda: output.symlink_to(tmp_path / "nowhere"),
     "link to /dev/null": lambda: output.symlink_to("/dev/null"), "fifo": lambda: os.mkfifo(output)}[kind]()
    for args in (calibrate_args(model_dir, output, "--force", dataset=data / "a" / "set.jsonl"),
                 ["profile", "--model", model_dir, "--layer", "2", "--output", str(output), "--force"],
                 calibrate_args(model_dir, tmp_path / "c.yaml", "--plot", str(output),
                                dataset=data / "a" / "set.jsonl")):
        line = one_line_error(args, capsys)
        assert ("is a symbolic link" if "link" in kind else "is a FIFO") in line
    assert precious.read_text() == "precious\n" and os.path.lexists(output)


def test_atomic_writer_refuses_a_link_at_write_time(tmp_path):
    from vtwcli.atomic import atomic_write_text

    precious = tmp_path / "precious.txt"
    precious.write_text("precious\n")
    (tmp_path / "out.yaml").symlink_to(precious)
    with pytest.raises(VtwError, match="is a symbolic link"):
        atomic_write_text(tmp_path / "out.yaml", "new\n")
    assert precious.read_text() == "precious\n" and (tmp_path / "out.yaml").is_symlink()


def test_output_whose_parent_is_a_file(model_dir, data, tmp_path, capsys, no_model_load):
    (tmp_path / "file").write_text("x")
    line = one_line_error(calibrate_args(model_dir, tmp_path / "file" / "c.yaml", dataset=data / "a" / "set.jsonl"),
                          capsys)
    assert f"{tmp_path / 'file'} is a file, not a directory" in line and "does not exist" not in line


def test_profile_refuses_an_existing_output_before_measuring(model_dir, tmp_path, capsys, no_model_load):
    existing = tmp_path / "p.yaml"
    existing.write_text("keep me\n")
    line = one_line_error(["profile", "--model", model_dir, "--layer", "2", "--output", str(existing)], capsys)
    assert "exists; pass --force" in line and existing.read_text() == "keep me\n"


def test_debug_after_the_subcommand(tmp_path):
    with pytest.raises(VtwError, match="no such profile file"):
        main(["check", str(tmp_path / "nope.yaml"), "--debug"])


# ---------------------------------------------------------------------------------------------- signals


@pytest.mark.parametrize("signum,name", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "Ctrl-C (SIGINT)")])
def test_interrupt_while_the_model_loads(model_dir, data, tmp_path, capsys, monkeypatch, signum, name):
    def load_until_signalled(*args, **kwargs):
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler interrupts this
        raise AssertionError("the signal did not stop the command")

    monkeypatch.setattr("vtwcli.loading.load_model", load_until_signalled)
    line = one_line_error(calibrate_args(model_dir, tmp_path / "c.yaml", dataset=data / "a" / "set.jsonl"), capsys,
                          code=130)
    assert f"interrupted by {name}" in line
    assert signal.getsignal(signal.SIGTERM) is not None  # handlers restored (not left raising)
    assert not list(p for p in tmp_path.iterdir())


# ------------------------------------------------------------------------------------ parsers (hypothesis)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(json_values)
def test_json_output_is_strict_whatever_the_numbers(value):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    parsed = json.loads(json_text(value), parse_constant=refuse)

    def same(a, b):
        if isinstance(a, float) and not math.isfinite(a):
            return b is None
        if isinstance(a, dict):
            return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return a == b

    assert same(value, parsed)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(["check", "p.yaml", "--json", "--debug", "--", "-x", "calibrate"]), max_size=8))
def test_debug_flag_moves_to_the_front_and_nothing_else_changes(argv):
    moved, debug = _debug_first(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    assert debug == ("--debug" in argv[:end])
    if debug:
        assert moved[0] == "--debug" and moved[1:] == [a for a in argv[:end] if a != "--debug"] + argv[end:]
    else:
        assert moved == argv


anchored = st.recursive(
    st.sampled_from(["x", "1", "0.5", "null"]),
    lambda inner: st.lists(inner, min_size=1, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
    max_leaves=6,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(anchored, st.sampled_from(["extra", "calibration", "tool", "model"]), st.integers(1, 6))
def test_any_anchor_or_alias_in_a_profile_is_refused(value, key, copies):
    from vtwcli.profile.files import parse_profile_text

    aliases = ", ".join(["*a"] * copies)
    text = GOOD.replace(f"\n{key}:", f"\n{key}_anchor: &a {value}\n{key}_alias: [{aliases}]\n{key}:", 1) \
        if f"\n{key}:" in GOOD else GOOD + f"{key}: &a {value}\n{key}2: [{aliases}]\n"
    with pytest.raises(VtwError, match="anchor/alias"):
        parse_profile_text(text, "p.yaml")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(json_values.map(json.dumps), st.text(max_size=40)), max_size=5))
def test_any_checkpoint_record_is_trusted_only_when_it_fits(tmp_path_factory, records):
    """Whatever follows a valid header: one VtwError line, or entries that passed the record checks."""
    from vtwcli.calibration_records import kl_record_problem
    from vtwcli.checkpoint import CheckpointStore, fingerprint

    path = tmp_path_factory.mktemp("ckpt") / "c.yaml.partial.jsonl"
    settings_ = {"run": 1}
    path.write_text("\n".join([json.dumps({"fingerprint": fingerprint(settings_)}), *records]) + "\n")
    try:
        store = CheckpointStore(path, settings_, resume=True)
        value = store.get("kl/0/set/0", check=lambda v: kl_record_problem(v, 1, 3))
    except VtwError as error:
        assert "\n" not in str(error) and str(path) in str(error)
    else:
        assert value is None or kl_record_problem(value, 1, 3) is None


def test_every_row_names_a_test_that_exists():
    """docs/errors.md: one row per error, and each row's test exists (in test_errors.py or here)."""
    import re

    import test_errors

    doc = (Path(__file__).parent.parent / "docs" / "errors.md").read_text(encoding="utf-8")
    table = doc.split("## The table", 1)[1].split("### Not an error", 1)[0]
    rows = [line for line in table.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(line.split("|")[1]) for line in rows] == list(range(1, len(rows) + 1))
    defined = {name for module in (test_errors, __import__(__name__)) for name in dir(module)
               if name.startswith("test_")}
    for line in rows:
        names = re.findall(r"`(test_\w+)`", line.rsplit("|", 2)[-2])
        assert names, line
        assert set(names) <= defined, (line, set(names) - defined)


# ------------------------------------------------------------- the second pass (vtw verify, --threads, config FLOPs)

@pytest.mark.parametrize("command", [["calibrate", "--output", "{tmp}/c.yaml"],
                                     ["profile", "--layer", "2", "--output", "{tmp}/p.yaml"],
                                     ["profile", "--flops-only", "--layer", "2", "--output", "{tmp}/p.yaml"],
                                     ["verify", "--output", "{tmp}/v.yaml"]])
def test_threads_above_what_torch_can_start(model_dir, tmp_path, capsys, command):
    """--threads 1e20 overflowed torch.set_num_threads (a traceback); a million would start a million threads."""
    for threads in ("99999999999999999999", "1025"):
        args = [part.format(tmp=tmp_path) for part in command] + ["--model", model_dir, "--threads", threads]
        assert one_line_error(args, capsys) == f"error: --threads {threads}: at most 1024; use the CPU cores or fewer"
    assert not list(tmp_path.iterdir())


QWEN_CONFIG = Path(__file__).parent.parent / "profiles" / "configs" / "qwen2.5-vl-7b"


def test_flops_only_images_past_any_context(tmp_path, capsys):
    """--flops-only --images 1e20 on a configs/ dir: OverflowError building the kept positions (a traceback);
    now row 82's refusal, before any tensor of that length."""
    line = one_line_error(["profile", "--flops-only", "--layer", "2", "--model", str(QWEN_CONFIG),
                           "--images", "99999999999999999999", "--output", str(tmp_path / "p.yaml")], capsys)
    assert "more than the model's context of 128000 tokens (max_position_embeddings)" in line
    assert not list(tmp_path.iterdir())


def test_flops_only_image_size_the_processor_rejects(tmp_path, capsys):
    """Qwen2.5-VL's processor refuses an aspect ratio of 200 or more: was its ValueError as a traceback."""
    line = one_line_error(["profile", "--flops-only", "--layer", "2", "--model", str(QWEN_CONFIG),
                           "--image-size", "1x8192", "--output", str(tmp_path / "p.yaml")], capsys)
    assert line.startswith("error: --image-size 1x8192: the image processor rejects it (absolute aspect ratio")
    assert line.endswith("; use a less extreme size")
    assert not list(tmp_path.iterdir())


def test_verify_new_tokens_zero_before_the_model_loads(model_dir, tmp_path, capsys, no_model_load):
    """vtw verify --new-tokens 0 was refused only after the model loaded; 99999999999 generated until killed."""
    args = ["verify", "--model", model_dir, "--output", str(tmp_path / "v.yaml"), "--new-tokens", "0"]
    assert one_line_error(args, capsys) == "error: --new-tokens 0: generate at least 1 token"


def test_verify_new_tokens_longer_than_the_context(model_dir, tmp_path, capsys):
    args = ["verify", "--model", model_dir, "--output", str(tmp_path / "v.yaml"), "--new-tokens", "99999999999"]
    started = time.monotonic()
    line = one_line_error(args, capsys)
    assert time.monotonic() - started < 60
    assert " + 99999999999 new tokens (--new-tokens), more than the model's context of " in line
    assert line.startswith("error: the verify prompt is ") and line.endswith("; lower --new-tokens")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("option", ["--min-speedup", "--max-speedup-drop", "--max-kl", "--max-flops-increase"])
def test_compare_nan_limit_is_bad_input(tmp_path, capsys, option):
    """A NaN limit failed its gate (exit 1, "below minimum nanx"): a CI job read it as a regression."""
    profile = tmp_path / "p.yaml"
    profile.write_text(dump_profile_yaml(example_profile()))
    line = one_line_error(["compare", str(profile), str(profile), option, "nan"], capsys)
    assert line == f"error: {option} nan: give a number"


def test_profile_section_of_the_wrong_container_type(tmp_path, capsys):
    """A hand-edited `verification: [1, 2]` was reported as "got array a array"."""
    data = example_profile()
    data["verification"] = [1, 2]
    profile = tmp_path / "p.yaml"
    profile.write_text(dump_profile_yaml(data))
    line = one_line_error(["check", str(profile)], capsys)
    assert line.endswith(": verification: expected mapping, got an array (invalid profile; see docs/profile-schema.md)")


def test_profile_min_runs_without_end(model_dir, tmp_path, capsys, no_model_load):
    """--min-runs 1e20 is a floor that --max-time does not cut: the profile timed pairs until killed."""
    line = one_line_error(["profile", "--model", model_dir, "--layer", "2", "--output", str(tmp_path / "p.yaml"),
                           "--min-runs", "99999999999999999999"], capsys)
    assert line == ("error: --min-runs 99999999999999999999: at most 10000 pairs; --ci-target and --max-time decide "
                    "how many more")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------- videos in config-only FLOPs (--videos, --frames)

@pytest.mark.parametrize("frames, videos, message", [
    ("0", "1", "--frames 0: use 1..2048 frames per video (each synthetic frame is held in memory)"),
    ("2049", "1", "--frames 2049: use 1..2048 frames per video (each synthetic frame is held in memory)"),
    ("8", "0", "--frames 8: the synthetic prompt has no video; add --videos N or drop --frames")])
@pytest.mark.parametrize("flops_only", [True, False])
def test_frames_out_of_range_or_without_videos(model_dir, tmp_path, capsys, no_model_load, frames, videos, message,
                                               flops_only):
    """--frames is checked with the other options, before any model or config loads."""
    args = ["profile", "--model", model_dir, "--layer", "2", "--videos", videos, "--frames", frames,
            "--output", str(tmp_path / "p.yaml")] + (["--flops-only"] if flops_only else [])
    assert one_line_error(args, capsys) == f"error: {message}"
    assert not list(tmp_path.iterdir())


def test_flops_only_videos_without_a_video_rule(tmp_path, capsys):
    """LLaVA-NeXT-Video takes video but has no config-only video-token rule (Adapter.video_tokens)."""
    from arch_models import FAMILIES

    family = FAMILIES["llava_next_video"]
    model = family.build(1, "sdpa", 0)
    model.config.architectures = [family.architecture]
    model.config.save_pretrained(tmp_path)
    line = one_line_error(["profile", "--model", str(tmp_path), "--layer", "1", "--flops-only", "--videos", "1"],
                          capsys)
    assert line == ("error: --videos with --flops-only: LLaVA-NeXT-Video has no config-only video-token rule "
                    "(Adapter.video_tokens) yet; drop --flops-only to count on the loaded model, or drop --videos")


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision imports here: the video processor can be built")
def test_flops_only_videos_without_torchvision(tmp_path, capsys):
    line = one_line_error(["profile", "--flops-only", "--layer", "2", "--model", str(QWEN_CONFIG), "--videos", "1",
                           "--output", str(tmp_path / "p.yaml")], capsys)
    assert line.startswith("error: --videos with --flops-only: Qwen2-VL / Qwen2.5-VL's video processor (transformers) "
                           "needs torchvision, which does not import here; install the torchvision that matches torch ")
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision imports here: the image processor can be built")
def test_flops_only_image_processor_without_torchvision(tmp_path, capsys):
    """Cohere2 Vision's image processor exists for torchvision only: without it, config-only FLOPs stop in one line
    that names torchvision (not a missing preprocessor_config.json, which is there)."""
    from arch_models import FAMILIES

    family = FAMILIES["cohere2_vision"]
    config = family.build(1, "sdpa", 0).config
    config.architectures = [family.architecture]
    config.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "Cohere2VisionImageProcessor", "size": {"height": 16, "width": 16}, "patch_size": 2,
         "max_patches": 4}))
    line = one_line_error(["profile", "--flops-only", "--layer", "1", "--model", str(tmp_path)], capsys)
    assert line.startswith("error: --flops-only: Cohere2 Vision's image processor (transformers) needs torchvision, "
                           f"which does not import here; install the torchvision that matches torch {torch.__version__}")


@pytest.mark.skipif(not HAS_TORCHVISION, reason="the video processor needs torchvision, which does not import here")
def test_flops_only_videos_without_processor_config(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text((QWEN_CONFIG / "config.json").read_text())
    line = one_line_error(["profile", "--flops-only", "--layer", "2", "--model", str(tmp_path / "m"), "--images", "0",
                           "--videos", "1"], capsys)
    assert line.startswith("error: --videos with --flops-only: Qwen2-VL / Qwen2.5-VL sizes its video tokens from the "
                           "video processor, so it needs video_preprocessor_config.json (or preprocessor_config.json) "
                           f"beside config.json in {tmp_path / 'm'} (")


@pytest.mark.skipif(not HAS_TORCHVISION, reason="the video processor needs torchvision, which does not import here")
def test_flops_only_video_size_the_processor_rejects(tmp_path, capsys):
    line = one_line_error(["profile", "--flops-only", "--layer", "2", "--model", str(QWEN_CONFIG), "--images", "0",
                           "--videos", "1", "--image-size", "1x8192", "--output", str(tmp_path / "p.yaml")], capsys)
    assert line.startswith("error: --frames 4 --image-size 1x8192: the video processor rejects such a video (absolute "
                           "aspect ratio must be smaller than 200")
    assert line.endswith("; use more frames or a less extreme size")
    assert not list(tmp_path.iterdir())
    # Qwen3-VL's video processor takes no fewer frames than its temporal patch (2)
    directory = config_only_family("qwen3_vl", tmp_path / "qwen3-vl", video_processor=True)
    line = one_line_error(["profile", "--flops-only", "--layer", "1", "--model", directory, "--images", "0", "--videos",
                           "1", "--frames", "1", "--image-size", "32x24"], capsys)
    assert line == ("error: --frames 1 --image-size 32x24: the video processor rejects such a video (t:1 must be larger "
                    "than temporal_factor:2); use more frames or a less extreme size")


def config_only_family(name: str, directory: Path, video_processor: bool = False) -> str:
    """config.json of a tiny model of the family (and, with ``video_processor``, its processor's config files)."""
    from arch_models import FAMILIES

    family = FAMILIES[name]
    model = family.build(2, "sdpa", 0)
    model.config.architectures = [family.architecture]
    model.config.save_pretrained(directory)
    if video_processor:
        processor = family.processor()
        processor.image_processor.save_pretrained(directory)
        processor.video_processor.save_pretrained(directory)
    return str(directory)


def test_images_beside_videos_on_glm(tmp_path, capsys, monkeypatch):
    """GLM-4V's video frames are <|image|> tokens, and its forward (transformers 5.24) scatters the image features
    over all of them: a prompt with images and videos fails inside the model. Refused before anything runs,
    config-only and loaded alike (no torchvision needed: the processor is never called)."""
    from arch_models import FAMILIES, save_and_serve

    message = ("error: --images 1 --videos 1: GLM-4.1V / GLM-4.5V / GLM-4.6V's video frames carry the image token, and "
               "its forward (transformers) cannot take images and videos in one prompt; add --images 0 (or drop "
               "--videos)")
    directory = config_only_family("glm4v", tmp_path / "config")
    assert one_line_error(["profile", "--flops-only", "--layer", "1", "--model", directory, "--videos", "1"],
                          capsys) == message
    directory = save_and_serve(FAMILIES["glm46v"], tmp_path / "model", monkeypatch, num_layers=2)
    assert one_line_error(["profile", "--layer", "1", "--model", directory, "--videos", "1", "--device", "cpu"],
                          capsys) == message


def test_withdraw_video_on_glm(tmp_path, capsys):
    """GLM-4V's video frames carry the image token: their tokens cannot be withdrawn apart from the images'."""
    directory = config_only_family("glm4v_moe", tmp_path)
    for args in (["--flops-only", "--images", "0", "--videos", "1"], ["--flops-only"]):
        line = one_line_error(["profile", "--layer", "1", "--model", directory, "--withdraw", "video", *args], capsys)
        assert line == ("error: --withdraw video: GLM-4.1V / GLM-4.5V / GLM-4.6V's video frames carry the image token, "
                        "so they cannot be withdrawn apart from the images; use --withdraw image (images and video "
                        "frames) or drop --withdraw")


# ------------------------------------------------------------- the third pass (config-only FLOPs, vtw verify)

def _flops_only_tokens(args: list[str], capsys) -> dict:
    code, out, err = run_cli(["profile", "--flops-only", "--json", *args], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    return json.loads(out)["flops"]["tokens"]


def _qwen25_tokens(width: int, height: int) -> int:
    """Qwen2.5-VL's published resize rule, written out: each side rounded to a multiple of 28 (patch 14 x merge
    2), scaled up to at least 3136 pixels; one token per 2 x 2 patches."""
    factor, low = 28, 3136
    rows, cols = round(height / factor) * factor, round(width / factor) * factor
    if rows * cols < low:
        beta = math.sqrt(low / (height * width))
        rows, cols = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return (rows // 14) * (cols // 14) // 4


@pytest.mark.parametrize("size", ["1x1", "150x1", "3x1", "4x4", "1x3"])
def test_flops_only_image_one_or_three_pixels_high(tmp_path, capsys, size):
    """An image 1 or 3 pixels high (or 4 x 4) went to the image processor as a bare array, which it read as
    channels first: "the vision-token rule gives 25 tokens but the model makes 15 features" (exit 2), and a
    1 x 3 image was counted as 3 x 1. Now a PIL image, as in the loaded model's prompt."""
    width, height = map(int, size.split("x"))
    tokens = _flops_only_tokens(["--layer", "2", "--model", str(QWEN_CONFIG), "--image-size", size], capsys)
    assert tokens["vision"] == _qwen25_tokens(width, height)


@pytest.mark.skipif(not HAS_TORCHVISION, reason="the video processor needs torchvision, which does not import here")
@pytest.mark.parametrize("size", ["1x1", "150x1", "100x3"])
def test_flops_only_video_frames_one_or_three_pixels_high(tmp_path, capsys, size):
    """The same for video frames (an array of frames is never a PIL image): now handed over channels last."""
    width, height = map(int, size.split("x"))
    tokens = _flops_only_tokens(["--layer", "2", "--model", str(QWEN_CONFIG), "--images", "0", "--videos", "1",
                                 "--frames", "2", "--image-size", size], capsys)
    assert tokens["vision"] == _qwen25_tokens(width, height)  # 2 frames: one temporal patch


def _config_only_dir(tmp_path: Path, name: str, **image_processor) -> Path:
    """config.json of the family's tiny model + its image processor's preprocessor_config.json, edited."""
    from arch_models import FAMILIES

    family = FAMILIES[name]
    model = family.build(2, "sdpa", 0)
    model.config.architectures = [family.architecture]
    model.config.save_pretrained(tmp_path)
    processor = family.processor().image_processor
    for key, value in image_processor.items():
        setattr(processor, key, value)
    processor.save_pretrained(tmp_path)
    return tmp_path


def test_flops_only_applies_what_the_processor_passes_its_image_processor(tmp_path, capsys):
    """InternVLProcessor calls its image processor with crop_to_patches=True whatever preprocessor_config.json
    says (the published InternVL configs say false): the config-only count read the file and counted 1 tile where
    the model sees 3 (exit 0, a third of the vision tokens). A 40 x 20 image with 16-pixel tiles, 1..4 of them:
    a 2 x 1 grid + the thumbnail = 3 tiles of (16 / 4)^2 x 0.5^2 = 4 tokens each."""
    folder = _config_only_dir(tmp_path / "internvl", "internvl", crop_to_patches=False)
    tokens = _flops_only_tokens(["--layer", "1", "--model", str(folder), "--image-size", "40x20"], capsys)
    assert tokens["vision"] == 3 * 4


def test_flops_only_gemma3_with_pan_and_scan_in_its_config(tmp_path, capsys):
    """Gemma3Processor passes do_pan_and_scan=False on every call: a preprocessor_config.json that turns it on
    made the config-only count fail ("the rule gives 4 tokens but the model makes 12 features") where the
    loaded model's prompt holds one image of mm_tokens_per_image tokens."""
    folder = _config_only_dir(tmp_path / "gemma3", "gemma3", do_pan_and_scan=True, pan_and_scan_min_crop_size=4,
                              pan_and_scan_max_num_crops=4, pan_and_scan_min_ratio_to_activate=1.2)
    config = json.loads((folder / "config.json").read_text())
    tokens = _flops_only_tokens(["--layer", "1", "--model", str(folder), "--image-size", "120x30"], capsys)
    assert tokens["vision"] == config["mm_tokens_per_image"]


def _qwen_copy(tmp_path: Path, edit=None, text: str | bytes | None = None) -> Path:
    """profiles/configs/qwen2.5-vl-7b with its preprocessor_config.json edited (``edit(dict)``) or replaced."""
    folder = tmp_path / "qwen"
    folder.mkdir()
    (folder / "config.json").write_text((QWEN_CONFIG / "config.json").read_text())
    target = folder / "preprocessor_config.json"
    if text is not None:
        target.write_bytes(text if isinstance(text, bytes) else text.encode())
    else:
        values = json.loads((QWEN_CONFIG / "preprocessor_config.json").read_text())
        edit(values)
        target.write_text(json.dumps(values))
    return folder


@pytest.mark.parametrize("text", ["[1, 2, 3]", '"hello"', "", '{"patch_size": 14,', b"\xff\xfe{}",
                                  '{"image_processor_type": "NoSuchImageProcessor"}'])
def test_flops_only_processor_config_that_cannot_be_read(tmp_path, capsys, text):
    """A preprocessor_config.json that is a list or a string was an AttributeError traceback; invalid JSON, bytes
    that are not UTF-8 or an unknown processor type read "it needs preprocessor_config.json ...; copy it", about a
    file that is there."""
    folder = _qwen_copy(tmp_path, text=text)
    line = one_line_error(["profile", "--flops-only", "--layer", "2", "--model", str(folder)], capsys)
    assert line.startswith(f"error: --flops-only: the image processor cannot be built from preprocessor_config.json "
                           f"in {folder} (")
    assert line.endswith("); fix the file or copy it again from the model repository")


@pytest.mark.parametrize("key, value", [("patch_size", 0), ("merge_size", 0), ("max_pixels", 0), ("patch_size", "14"),
                                        ("image_processor_type", "CLIPImageProcessor")])
def test_flops_only_processor_config_values_the_rule_cannot_use(tmp_path, capsys, key, value):
    """A zero patch or merge size, no pixels allowed, a string patch size (ZeroDivisionError, TypeError) or another
    family's image processor (AttributeError) were tracebacks."""
    folder = _qwen_copy(tmp_path, lambda values: values.update({key: value}))
    line = one_line_error(["profile", "--flops-only", "--layer", "2", "--model", str(folder)], capsys)
    assert line.startswith("error: --flops-only: Qwen2-VL / Qwen2.5-VL's image-token rule cannot work with the image "
                           "processor of preprocessor_config.json (")
    assert line.endswith("); check its patch, merge and pixel-bound values against the model repository's file")


@pytest.mark.parametrize("key, value", [("patch_size", 13), ("merge_size", 3), ("temporal_patch_size", 3)])
def test_flops_only_processor_config_that_disagrees_with_the_model(tmp_path, capsys, key, value):
    """A processor config whose patch, merge or temporal patch size is not the model's read "the vision tower does
    not run on the meta device; drop --flops-only" (the loaded model fails on it the same way)."""
    folder = _qwen_copy(tmp_path, lambda values: values.update({key: value}))
    line = one_line_error(["profile", "--flops-only", "--layer", "2", "--model", str(folder)], capsys)
    assert line.startswith("error: Qwen2_5_VLForConditionalGeneration: the vision tower failed on the meta device on "
                           "what the processor made of the input (RuntimeError: shape ")
    assert line.endswith("check config.json's vision_config and that the processor config agrees with it (patch, "
                         "merge and temporal patch sizes), else drop --flops-only to count on the loaded model")


def test_flops_only_processor_out_of_memory(tmp_path, capsys, monkeypatch):
    """torch's CPU allocator failing inside the image processor read "the image processor rejected 1 image(s)"."""
    from vtwcli import vision_tokens

    def exhausted(self, *args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 2157969408 bytes. Error code 12 (Cannot allocate memory)")

    def built(source):  # the image processor of the files (PIL or torchvision backend), its calls failing
        processor = real(source)
        monkeypatch.setattr(type(processor), "__call__", exhausted)
        return processor

    real = vision_tokens.image_processor_of
    monkeypatch.setattr(vision_tokens, "image_processor_of", built)
    line = one_line_error(["profile", "--flops-only", "--layer", "2", "--model", str(QWEN_CONFIG)], capsys)
    assert line.startswith("error: out of memory ([enforce fail at alloc_cpu.cpp:127] err == 0.")


QWEN3_CONFIG = Path(__file__).parent.parent / "profiles" / "configs" / "qwen3-vl-8b"


def _qwen3_copy(tmp_path: Path, edit) -> Path:
    """profiles/configs/qwen3-vl-8b with its config.json edited (``edit(dict)``)."""
    folder = tmp_path / "qwen3"
    folder.mkdir()
    (folder / "preprocessor_config.json").write_text((QWEN3_CONFIG / "preprocessor_config.json").read_text())
    values = json.loads((QWEN3_CONFIG / "config.json").read_text())
    edit(values)
    (folder / "config.json").write_text(json.dumps(values))
    return folder


@pytest.mark.parametrize("edit", [lambda c: c.update(image_token_id="x"),
                                  lambda c: c["text_config"].update(num_hidden_layers="36"),
                                  lambda c: c.update(text_config=[1])], ids=["id", "layers", "text_config"])
def test_config_value_of_the_wrong_type(tmp_path, capsys, edit):
    """transformers 5 validates every config field: a string token id or layer count, a list for text_config
    escaped as a StrictDataclassFieldValidationError traceback."""
    folder = _qwen3_copy(tmp_path, edit)
    line = one_line_error(["profile", "--flops-only", "--layer", "2", "--model", str(folder)], capsys)
    assert line.startswith(f"error: --model {folder}: config.json has a value transformers refuses (Validation error "
                           "for field '")
    assert line.endswith("); fix that value or re-save the model with save_pretrained")


@pytest.mark.parametrize("edit, key, value", [
    (lambda c: c["text_config"].update(num_hidden_layers=10 ** 12), "num_hidden_layers", 10 ** 12),
    (lambda c: c["vision_config"].update(depth=10 ** 12), "depth", 10 ** 12),
    (lambda c: c["text_config"].update(num_hidden_layers=0), "num_hidden_layers", 0)], ids=["text", "vision", "none"])
@pytest.mark.parametrize("flops_only", [True, False])
def test_config_layer_counts_out_of_reach(tmp_path, capsys, edit, key, value, flops_only):
    """10^12 layers: building the model never ended (killed after minutes); 0 layers read "--layer 2: out of
    range ... use 1..0". Refused from config.json, before any model is built."""
    folder = _qwen3_copy(tmp_path, edit)
    started = time.monotonic()
    args = ["profile", "--layer", "2", "--model", str(folder)] + (["--flops-only"] if flops_only else [])
    line = one_line_error(args, capsys)
    assert time.monotonic() - started < 60
    assert line.startswith(f"error: --model {folder}: config.json sets {key} = {value} (Qwen3VL")
    assert line.endswith("layers is out of reach (and no profile records it); fix the value" if value else
                         "a model needs at least 1 decoder layer; fix the value")


def test_flops_only_config_whose_heads_do_not_fit(tmp_path, capsys):
    """7 attention heads for 8 key/value heads (head_dim given, so transformers builds it): a RuntimeError traceback
    from the language model's forward on the meta device."""
    folder = _qwen3_copy(tmp_path, lambda c: c["text_config"].update(num_attention_heads=7))
    line = one_line_error(["profile", "--flops-only", "--layer", "2", "--model", str(folder)], capsys)
    assert line.startswith("error: Qwen3VLForConditionalGeneration: the language model failed on the meta device "
                           "(RuntimeError: ")
    assert line.endswith("check config.json's text model values (attention and key/value heads, head size) against "
                         "the model repository, else drop --flops-only to count on the loaded model")


def test_config_architectures_given_as_one_string(tmp_path, capsys):
    """`"architectures": "Qwen3VLForConditionalGeneration"` (a string, not a list) read "architecture Q has no
    vtwcli adapter": its first letter. One class name is that class."""
    folder = _qwen3_copy(tmp_path, lambda c: c.update(architectures="Qwen3VLForConditionalGeneration"))
    output = tmp_path / "p.yaml"
    code, _, err = run_cli(["profile", "--flops-only", "--layer", "2", "--model", str(folder), "--output", str(output)],
                           capsys)
    assert code == 0, err
    assert yaml.safe_load(output.read_text())["model"]["architecture"] == "Qwen3VLForConditionalGeneration"


@pytest.mark.parametrize("flops_only", [True, False])
def test_negative_videos(model_dir, tmp_path, capsys, no_model_load, flops_only):
    """--videos -1 read "needs torchvision" (or, with it, "the video processor rejected -1 video(s): list index
    out of range"); now refused with the other options, before any model or config loads."""
    args = ["profile", "--model", model_dir, "--layer", "2", "--videos", "-1"] + (["--flops-only"] if flops_only else [])
    assert one_line_error(args, capsys) == "error: --videos -1: use 0 or more videos"


def test_flops_only_prompt_past_the_context_names_what_sized_it(tmp_path, capsys):
    """A prompt made long by --image-size (or --videos / --frames) was told to "lower --text-tokens / --images"."""
    line = one_line_error(["profile", "--flops-only", "--layer", "2", "--model", str(QWEN_CONFIG), "--images", "8",
                           "--image-size", "8192x8192"], capsys)
    assert line.startswith("error: the synthetic prompt is 131136 tokens (text and vision)")  # 8 x 16384 + 64
    assert line.endswith("; lower --text-tokens / --images / --image-size")


def _frames_dataset(tmp_path: Path, **sample) -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "images" / "cat.jpg").write_bytes(PHOTO.read_bytes())
    row = {"id": "v1", "question": "what is shown?", "answer": "cat", **sample}
    return write_jsonl(tmp_path / "set.jsonl", [row])


def test_verify_video_sample_on_a_model_without_video(model_dir, tmp_path, capsys):
    """A video sample on LLaVA-1.5 (no video input): the chat template dropped the video, and verify reported
    "withdrawal is not exact on this model: ... the prompts carry no pixel input" (exit 1, a failed check about
    the model) where `vtw calibrate` refuses the sample (row 57). Now the same refusal, exit 2."""
    path = _frames_dataset(tmp_path, video=["images/cat.jpg", "images/cat.jpg"])
    code, _, err = run_cli(["verify", "--model", model_dir, "--dataset", str(path)], capsys)
    assert code == 2
    assert err == (f"error: {path}:1: the sample has a video but LLaVA-1.5 takes no video input; drop its video (or "
                   "verify a model with video input)\n")  # nothing else on stderr: no empty line before it


def test_verify_sample_longer_than_the_context(model_dir, tmp_path, capsys):
    """A question of 5000 words was "the verify prompt is 5019 tokens ... + 4 new tokens (--new-tokens) ...; lower
    --new-tokens", which cannot help: now the sample and what to do about it, as `vtw calibrate` says."""
    path = _frames_dataset(tmp_path, image="images/cat.jpg", question="word " * 5000)
    line = one_line_error(["verify", "--model", model_dir, "--dataset", str(path)], capsys)
    assert line.startswith(f"error: {path}:1: the prompt is ")
    assert line.endswith(" tokens (text and vision), more than the model's context of 256 tokens "
                         "(max_position_embeddings); shorten the question or drop the sample")


def test_verify_output_of_another_model_before_the_model_loads(model_dir, tmp_path, capsys, no_model_load):
    """Row 106 was reached only after every check had run (minutes on a 7B model): the config's hash is read from
    config.json before the model loads."""
    other = tmp_path / "other.yaml"
    other.write_text(GOOD)
    line = one_line_error(["verify", "--model", model_dir, "--output", str(other)], capsys)
    assert line.startswith(f"error: --output {other} is a profile of another model (")
    assert other.read_text() == GOOD


def test_attn_the_architecture_does_not_implement(tmp_path, capsys):
    """sdpa (the default) on a family transformers implements with eager attention only (GOT-OCR2, with --generic)
    read "no loadable weights in the directory (ValueError); it needs model.safetensors", beside the file."""
    from transformers import GotOcr2Config, GotOcr2ForConditionalGeneration

    text = dict(model_type="qwen2", vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    vision = dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=4, image_size=64,
                  patch_size=16, mlp_dim=64, global_attn_indexes=[1], window_size=2)
    model = GotOcr2ForConditionalGeneration(GotOcr2Config(text_config=text, vision_config=vision, image_token_index=5))
    model.config.architectures = ["GotOcr2ForConditionalGeneration"]
    model.save_pretrained(tmp_path / "got")
    line = one_line_error(["verify", "--model", str(tmp_path / "got"), "--generic"], capsys)
    assert line.startswith("error: --attn sdpa: transformers ")
    assert " does not implement it for GotOcr2ForConditionalGeneration (" in line
    assert line.endswith("; use --attn eager")


def test_listed_family_without_a_vision_config_is_not_text_only(tmp_path, capsys):
    """Fuyu projects image patches straight into the sequence and has no vision_config: it was "FuyuForCausalLM is
    a text-only model", where `vtw models` lists it as planned."""
    from transformers import FuyuConfig

    config = FuyuConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config.architectures = ["FuyuForCausalLM"]
    config.save_pretrained(tmp_path)
    line = one_line_error(["profile", "--flops-only", "--layer", "1", "--model", str(tmp_path)], capsys)
    assert line.startswith("error: architecture FuyuForCausalLM has no vtwcli adapter (planned: image patches "
                           "projected straight into the sequence")


@pytest.mark.parametrize("tokens, message", [
    ({"videos": 2}, "flops.tokens.frames: required key is missing (it goes with videos)"),
    ({"frames": 3}, "flops.tokens.videos: required key is missing (it goes with frames)"),
    ({"videos": 0, "frames": 3}, "flops.tokens.videos: expected a value >= 1, got 0")])
def test_profile_videos_and_frames_go_together(tmp_path, capsys, tokens, message):
    """`vtw profile` writes `videos` and `frames` together, only for a prompt with videos; a hand-edited profile
    with one of them (or 0 videos and some frames) passed `vtw check`."""
    data = example_profile()
    data["flops"]["tokens"].update(tokens)
    profile = tmp_path / "p.yaml"
    profile.write_text(dump_profile_yaml(data))
    line = one_line_error(["check", str(profile)], capsys)
    assert line.startswith(f"error: {profile}:") and line.endswith(f": {message} (invalid profile; see "
                                                                    "docs/profile-schema.md)")


@pytest.mark.parametrize("sent, name", [("SIGINT", "Ctrl-C (SIGINT)"), ("SIGTERM", "SIGTERM")])
def test_interrupt_while_the_cli_imports(tmp_path, sent, name):
    """Ctrl-C in the first third of a second (the CLI importing typer, rich, its commands) printed a KeyboardInterrupt
    traceback of 20-60 lines; SIGTERM killed it without a word. A stand-in `typer` module sends the signal from
    inside those imports."""
    import subprocess
    import sys

    (tmp_path / "typer.py").write_text(f"import os, signal, time\nos.kill(os.getpid(), signal.{sent})\ntime.sleep(30)\n")
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repo)])}
    result = subprocess.run([sys.executable, "-c", "from vtwcli.cli import main; main()", "check", "p.yaml"],
                            capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert result.returncode == 130
    assert result.stderr == (f"error: interrupted by {name} before the command finished; no output was written "
                             "half-way (files are written whole or not at all)\n")


def test_verify_seed_out_of_range_before_the_model_loads(model_dir, capsys, no_model_load):
    """`vtw calibrate` and `vtw profile` refuse --seed -1 (row 79); `vtw verify` took it."""
    line = one_line_error(["verify", "--model", model_dir, "--seed", "-1"], capsys)
    assert line == "error: --seed -1: use an integer in 0..4294967295"


def test_flops_only_prints_no_transformers_notes(tmp_path, capsys):
    """A preprocessor_config.json without image_processor_type made transformers print its fallback note on stderr
    (`vtw profile` on a loaded model silences such notes)."""
    import subprocess
    import sys

    folder = _qwen_copy(tmp_path, lambda values: [values.pop("image_processor_type"), values.pop("processor_class")])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run([sys.executable, "-c", "from vtwcli.cli import main; main()", "profile", "--flops-only",
                             "--layer", "2", "--model", str(folder)], capture_output=True, text=True, env=env,
                            timeout=300, cwd=tmp_path)  # its own process: transformers logs to the real stderr
    assert result.returncode == 0 and result.stderr == ""
