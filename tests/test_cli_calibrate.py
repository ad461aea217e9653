"""`vtw calibrate` end to end on a tiny saved model: profile contents, exit codes, interrupt and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from tiny_models import save_tiny_llava

from vtwcli.cli import main

VOLATILE = ("created_at",)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), num_layers=4)


def run_cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


def comparable(profile: dict) -> dict:
    profile = {k: v for k, v in profile.items() if k not in VOLATILE}
    profile["calibration"] = dict(profile["calibration"], cost=None)
    return profile


def test_calibrate_writes_a_profile_whose_layer_is_the_first_under_threshold(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "calib.yaml"
    code = run_cli(["calibrate", "--model", tiny_model_dir, "--dataset", "photo_vqa", "--samples", "6",
                    "--threshold", "1e9", "--output", str(output)])
    assert code == 0
    profile = yaml.safe_load(output.read_text())
    calibration = profile["calibration"]
    assert [e["layer"] for e in calibration["per_layer"]] == [1, 2, 3]
    assert calibration["layer"] == 1  # every mean KL is below a huge threshold
    assert profile["model"]["num_layers"] == 4
    assert profile["data"][0]["samples"] == 6 and len(profile["data"][0]["sample_ids"]) == 6
    assert len(calibration["per_sample"]) == 6
    means = [sum(s["kl"][i] for s in calibration["per_sample"]) / 6 for i in range(3)]
    assert means == pytest.approx([e["kl_mean"] for e in calibration["per_layer"]], rel=1e-9)
    assert profile["evaluation"]["withdrawn"]["layer"] == 1
    assert "profile written to" in capsys.readouterr().out


def test_no_layer_under_threshold_exits_1_and_still_records_the_curve(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "calib.yaml"
    code = run_cli(["calibrate", "--model", tiny_model_dir, "--dataset", "photo_vqa", "--samples", "4",
                    "--threshold", "0", "--no-eval", "--output", str(output)])
    assert code == 1
    assert "no layer in 1..3 has mean KL <= 0.0" in capsys.readouterr().err
    profile = yaml.safe_load(output.read_text())
    assert profile["calibration"]["layer"] is None and len(profile["calibration"]["per_layer"]) == 3


def test_existing_output_is_not_overwritten_without_force(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "calib.yaml"
    output.write_text("keep me\n")
    code = run_cli(["calibrate", "--model", tiny_model_dir, "--dataset", "photo_vqa", "--samples", "3",
                    "--threshold", "1e9", "--no-eval", "--output", str(output)])
    assert code == 0
    assert output.read_text() == "keep me\n"
    assert (tmp_path / "calib-1.yaml").exists()
    assert "writing" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--threshold", "-1"], "--threshold must be a finite number >= 0"),
    (["--threshold", "nan"], "--threshold must be a finite number >= 0"),
    (["--min-layer", "4"], "--min-layer 4 is out of range"),
    (["--samples", "0"], "sample size must be at least 1"),
    (["--samples", "999"], "has only 32 available"),
    (["--dataset", "no_such_set"], "no_such_set"),
])
def test_bad_options_are_one_line_errors_with_exit_2(tiny_model_dir, tmp_path, capsys, args, message):
    base = ["calibrate", "--model", tiny_model_dir, "--dataset", "photo_vqa", "--output", str(tmp_path / "c.yaml")]
    code = run_cli(base + args)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_interrupted_run_resumes_to_the_same_profile(tiny_model_dir, tmp_path):
    args = ["calibrate", "--model", tiny_model_dir, "--dataset", "photo_vqa", "--dataset", "photo_mc",
            "--samples", "10", "--batch-size", "1", "--threshold", "1e9"]
    reference = tmp_path / "reference.yaml"
    assert run_cli(args + ["--output", str(reference)]) == 0

    output = tmp_path / "interrupted.yaml"
    checkpoint = tmp_path / "interrupted.yaml.partial.jsonl"
    command = [sys.executable, "-c", "from vtwcli.cli import main; main()", *args, "--output", str(output)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               # same thread count as this process, so both halves compute bit-identically
                               env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(torch.get_num_threads())))
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if checkpoint.exists() and len(checkpoint.read_text().splitlines()) >= 2:  # header + a finished batch
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run finished before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "--resume" in err and "Traceback" not in err
    assert not output.exists() and checkpoint.exists()

    assert run_cli(args + ["--output", str(output)]) == 2  # a leftover checkpoint needs --resume or --force
    assert run_cli(args + ["--output", str(output), "--resume"]) == 0
    assert not checkpoint.exists()
    assert comparable(yaml.safe_load(output.read_text())) == comparable(yaml.safe_load(reference.read_text()))


def test_diagnose_plot_json_and_teacher_forced(tiny_model_dir, tmp_path, capsys):
    import json

    output, plot = tmp_path / "calib.yaml", tmp_path / "kl.png"
    code = run_cli(["calibrate", "--model", tiny_model_dir, "--dataset", "photo_vqa", "--samples", "4",
                    "--threshold", "1e9", "--no-eval", "--attn", "eager", "--diagnose", "--criterion",
                    "teacher_forced", "--plot", str(plot), "--json", "--output", str(output)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    profile = yaml.safe_load(output.read_text())
    assert printed["calibration"]["per_layer"] == profile["calibration"]["per_layer"]
    assert profile["calibration"]["criterion"] == "teacher_forced"
    shares = profile["calibration"]["diagnose"]
    assert [row["layer"] for row in shares] == [0, 1, 2, 3]
    for row in shares:  # the last token's attention is a distribution over the real tokens
        assert row["system"] + row["vision"] + row["text"] == pytest.approx(1.0, abs=1e-4)
        assert min(row["system"], row["vision"], row["text"]) >= 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_diagnose_needs_eager_attention(tiny_model_dir, tmp_path, capsys):
    code = run_cli(["calibrate", "--model", tiny_model_dir, "--dataset", "photo_vqa", "--samples", "2",
                    "--diagnose", "--output", str(tmp_path / "c.yaml")])
    assert code == 2 and "--attn eager" in capsys.readouterr().err
