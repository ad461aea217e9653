"""The profile: schema validation, one-line read errors, atomic writes, versioning, typing, apply_profile."""

from __future__ import annotations

import copy
import dataclasses
import os
import string
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from profile_fixtures import example_profile
from tiny_models import tiny_llava

import vtwcli
from vtwcli import atomic
from vtwcli import profile as P
from vtwcli.cli import main
from vtwcli.errors import VtwError


def run_main(argv, capsys):
    """vtwcli.cli.main -> (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def one_line_error(capsys, path) -> str:
    code, _, err = run_main(["check", str(path)], capsys)
    assert code == 2
    assert err.startswith("error: ")
    assert err.strip().count("\n") == 0, err
    return err.strip()


def written(tmp_path, data, name="p.yaml") -> Path:
    return P.write_profile(data, tmp_path / name)


# ------------------------------------------------------------------------------------------- header

def test_header_validates_and_describes_the_environment():
    model = {"name_or_path": "bundled", "architecture": "LlavaForConditionalGeneration", "num_layers": 4,
             "dtype": "float32", "device": "cpu", "attn_implementation": "sdpa", "config_sha256": "b" * 64}
    header = P.new_profile(model, "cpu", command="vtw calibrate")
    assert list(header) == ["schema_version", "created_at", "tool", "model", "environment"]
    assert header["schema_version"] == P.SCHEMA_VERSION == 1
    assert header["tool"] == {"name": "vtwcli", "command": "vtw calibrate"}
    env = header["environment"]
    assert set(env) == {"vtwcli", "python", "torch", "transformers", "platform", "device_name"}
    assert env["vtwcli"] == vtwcli.__version__ and all(isinstance(v, str) and v for v in env.values())
    assert header["created_at"].endswith("+00:00") and "T" in header["created_at"]
    P.validate_profile_dict(header)
    assert P.new_profile(model, "cpu")["tool"]["command"]  # defaults to the process command line


def test_valid_example_roundtrips_through_yaml(tmp_path):
    data = example_profile()
    path = written(tmp_path, data)
    assert P.read_profile_dict(path) == data
    text = path.read_text()
    # header first, environment last, plain numbers and nulls
    keys = [line.split(":")[0] for line in text.splitlines() if line and line[0].isalpha()]
    assert keys[:4] == ["schema_version", "created_at", "tool", "model"] and keys[-1] == "environment"
    assert "cuda_peak_allocated_bytes: null" in text and "total: 1000000\n" in text


def test_section_order_is_canonical_and_unknown_keys_survive(tmp_path):
    data = example_profile()
    shuffled = {"environment": data.pop("environment"), "x_future": {"a": [1, 2]}, **data}
    path = written(tmp_path, shuffled)
    loaded = P.read_profile_dict(path)
    assert loaded["x_future"] == {"a": [1, 2]}
    assert list(loaded)[-2:] == ["environment", "x_future"]


def test_plain_numbers_from_numpy_and_torch(tmp_path):
    np = pytest.importorskip("numpy")
    import torch

    data = example_profile()
    data["flops"]["tokens"]["vision"] = np.int64(576)
    data["calibration"]["threshold"] = np.float32(0.25)
    data["evaluation"]["baseline"]["accuracy"] = torch.tensor(0.5)
    loaded = P.read_profile_dict(written(tmp_path, data))
    assert loaded["flops"]["tokens"]["vision"] == 576 and type(loaded["flops"]["tokens"]["vision"]) is int
    assert loaded["calibration"]["threshold"] == 0.25 and loaded["evaluation"]["baseline"]["accuracy"] == 0.5


def test_unquoted_timestamp_stays_text(tmp_path):
    path = written(tmp_path, example_profile())
    path.write_text(path.read_text().replace("created_at: '2026-11-26T07:00:00+00:00'",
                                             "created_at: 2026-11-26T07:00:00+00:00"))
    assert P.read_profile_dict(path)["created_at"] == "2026-11-26T07:00:00+00:00"


# ----------------------------------------------------------------------------------------- validation

def test_validate_names_key_path_and_expectation():
    data = example_profile()
    data["calibration"]["per_layer"][3]["kl_mean"] = "abc"
    with pytest.raises(VtwError, match=r"x\.yaml: calibration\.per_layer\[3\]\.kl_mean: expected number, got string"):
        P.validate_profile_dict(data, "x.yaml")


@pytest.mark.parametrize("mutate, path, expected", [
    (lambda d: d["model"].__setitem__("num_layers", 2.5), "model.num_layers", "expected integer"),
    (lambda d: d["model"].__setitem__("num_layers", True), "model.num_layers", "expected integer"),
    (lambda d: d["calibration"].__setitem__("criterion", "mean"), "calibration.criterion", "expected one of"),
    (lambda d: d["calibration"].__setitem__("layer", 0), "calibration.layer", ">= 1"),
    (lambda d: d["evaluation"]["baseline"].__setitem__("accuracy", 95), "evaluation.baseline.accuracy", "<= 1"),
    (lambda d: d["flops"]["baseline"].__setitem__("typo", 1), "flops.baseline.typo", "unknown key"),
    (lambda d: d["memory"]["withdrawn"].pop("kv_cache_bytes"), "memory.withdrawn.kv_cache_bytes", "required"),
    (lambda d: d.pop("environment"), "environment", "required"),
    (lambda d: d["latency"]["withdrawn"].__setitem__("decode_ms_per_token", 3), "latency.withdrawn.decode_ms_per_token",
     "expected a mapping"),
    (lambda d: d["flops"]["withdrawn"].__setitem__("total", 1.5), "flops.withdrawn.total", "expected integer"),
])
def test_schema_rejects(mutate, path, expected):
    data = example_profile()
    mutate(data)
    with pytest.raises(VtwError) as info:
        P.validate_profile_dict(data, "p.yaml")
    message = str(info.value)
    assert f": {path}: " in message and expected in message and "\n" not in message


def test_nullable_and_optional_keys_validate():
    data = example_profile(layer=None)
    P.validate_profile_dict(data)
    data["latency"]["baseline"]["decode_ms_per_token"] = None
    data["latency"]["speedup"]["decode_per_token"] = None
    for section in ("data", "calibration", "evaluation", "withdrawal", "flops", "latency", "memory", "tool"):
        data.pop(section, None)
    P.validate_profile_dict(data)


def test_shipped_schema_is_a_valid_draft_2020_12_schema():
    import jsonschema

    schema = P.schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["required"] == ["schema_version", "created_at", "model", "environment"]
    assert schema["additionalProperties"] is True


# ------------------------------------------------------------------------------------- read errors

def test_missing_file_and_directory(tmp_path, capsys):
    assert "no such profile file" in one_line_error(capsys, tmp_path / "nope.yaml")
    assert "a directory, not a regular file" in one_line_error(capsys, tmp_path)


def test_corrupted_yaml_names_line_and_column(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("schema_version: 1\nmodel: {name: [1, 2\nenvironment: x\n")
    err = one_line_error(capsys, path)
    assert str(path) in err and "corrupted or truncated YAML at line" in err and "column" in err


def test_truncated_yaml(tmp_path, capsys):
    path = written(tmp_path, example_profile())
    text = path.read_text()
    cut = text.index("kl_ci_low: 0.008")  # inside a flow mapping: unterminated
    path.write_text(text[:cut])
    err = one_line_error(capsys, path)
    assert "corrupted or truncated YAML" in err and str(path) in err
    # cut at a line boundary: parses, but sections are missing
    path.write_text(text[: text.index("calibration:")])
    err = one_line_error(capsys, path)
    assert "environment: required key is missing" in err


def test_not_utf8_and_not_a_mapping(tmp_path, capsys):
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert "not a text file" in one_line_error(capsys, binary)
    listing = tmp_path / "l.yaml"
    listing.write_text("- 1\n- 2\n")
    assert "must be a YAML mapping" in one_line_error(capsys, listing)
    empty = tmp_path / "e.yaml"
    empty.write_text("")
    assert "empty" in one_line_error(capsys, empty)


def test_missing_key_reports_path_and_line(tmp_path, capsys):
    path = written(tmp_path, example_profile())
    lines = path.read_text().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if line.startswith("  threshold:"))
    del lines[index]
    path.write_text("".join(lines))
    calibration_line = next(i for i, line in enumerate(lines) if line.startswith("calibration:")) + 1
    err = one_line_error(capsys, path)
    assert f"{path}:{calibration_line}: calibration.threshold: required key is missing" in err


def test_wrong_type_reports_path_and_line(tmp_path, capsys):
    path = written(tmp_path, example_profile())
    lines = path.read_text().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if "{layer: 4, kl_mean: 0.01," in line)
    lines[index] = lines[index].replace("kl_mean: 0.01,", "kl_mean: lots,")
    path.write_text("".join(lines))
    err = one_line_error(capsys, path)
    assert f"{path}:{index + 1}: calibration.per_layer[3].kl_mean: expected number, got string 'lots'" in err


def test_schema_version_handling(tmp_path, capsys):
    data = example_profile()
    data["schema_version"] = 2
    path = tmp_path / "new.yaml"
    path.write_text(yaml.safe_dump(data))
    err = one_line_error(capsys, path)
    assert "schema_version 2" in err and "newer vtwcli" in err and "pip install -U vtwcli" in err
    del data["schema_version"]
    path.write_text(yaml.safe_dump(data))
    assert "schema_version is missing" in one_line_error(capsys, path)
    data["schema_version"] = "1"
    path.write_text(yaml.safe_dump(data))
    assert "schema_version must be an integer" in one_line_error(capsys, path)
    data["schema_version"] = 0
    path.write_text(yaml.safe_dump(data))
    assert "schema_version 0 is too old" in one_line_error(capsys, path)


def test_older_schema_is_migrated(tmp_path, monkeypatch):
    """A fake v0 stored the layer count as model.layers; its registered migration renames it."""
    def v0_to_v1(data):
        data["model"] = dict(data["model"])
        data["model"]["num_layers"] = data["model"].pop("layers")
        return data

    monkeypatch.setitem(P.MIGRATIONS, 0, v0_to_v1)
    old = example_profile()
    old["schema_version"] = 0
    old["model"]["layers"] = old["model"].pop("num_layers")
    path = tmp_path / "v0.yaml"
    path.write_text(yaml.safe_dump(old, sort_keys=False))
    migrated = P.read_profile_dict(path)
    assert migrated == example_profile()
    assert P.load_profile(path).model.num_layers == 8


# ------------------------------------------------------------------------------------------- writing

def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_write_refuses_existing_file_without_force(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("original\n")
    with pytest.raises(VtwError, match=r"exists; pass --force to overwrite or choose another --output"):
        P.write_profile(example_profile(), path)
    assert path.read_text() == "original\n"
    P.write_profile(example_profile(), path, force=True)
    assert P.read_profile_dict(path) == example_profile()
    assert leftovers(tmp_path) == []


def test_write_invalid_profile_writes_nothing(tmp_path):
    data = example_profile()
    data["model"].pop("architecture")
    with pytest.raises(VtwError, match="model.architecture: required key is missing"):
        P.write_profile(data, tmp_path / "p.yaml")
    assert list(tmp_path.iterdir()) == []


def test_write_missing_or_unwritable_directory(tmp_path, monkeypatch):
    with pytest.raises(VtwError, match="does not exist"):
        P.write_profile(example_profile(), tmp_path / "no" / "p.yaml")
    with pytest.raises(VtwError, match="is a directory"):
        P.write_profile(example_profile(), tmp_path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", denied)
    with pytest.raises(VtwError, match="is not writable") as info:
        P.write_profile(example_profile(), tmp_path / "p.yaml")
    assert "\n" not in str(info.value)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory permissions")
def test_write_read_only_directory(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(VtwError, match="not writable"):
            P.write_profile(example_profile(), locked / "p.yaml")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("failure", [OSError(5, "Input/output error"), KeyboardInterrupt()])
def test_failure_mid_write_keeps_the_original(tmp_path, monkeypatch, failure):
    path = tmp_path / "p.yaml"
    P.write_profile(example_profile(), path)
    before = path.read_bytes()
    changed = example_profile()
    changed["calibration"]["threshold"] = 0.5

    def broken_fsync(fd):
        raise failure

    monkeypatch.setattr(atomic.os, "fsync", broken_fsync)
    with pytest.raises(VtwError if isinstance(failure, OSError) else KeyboardInterrupt):
        P.write_profile(changed, path, force=True)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_failed_rename_keeps_the_original(tmp_path, monkeypatch):
    path = tmp_path / "p.yaml"
    P.write_profile(example_profile(), path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(VtwError, match="No space left on device"):
        P.write_profile(example_profile(layer=None), path, force=True)
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_written_file_mode_follows_umask(tmp_path):
    path = written(tmp_path, example_profile())
    assert path.stat().st_mode & 0o777 == 0o666 & ~atomic._umask()


# -------------------------------------------------------------------------------------------- typing

def test_load_profile_is_typed(tmp_path):
    profile = P.load_profile(written(tmp_path, example_profile()))
    assert profile.layer == 5
    assert profile.model.num_layers == 8 and profile.model.architecture == "LlavaForConditionalGeneration"
    assert profile.calibration.per_layer[4] == P.LayerKL(5, 0.002, 0.007, 0.004, 0.0016, 0.0025)
    assert profile.calibration.kl_at(5).kl_mean == 0.002
    assert profile.calibration.per_dataset[0].name == "synthetic_color"
    assert profile.data[0].sample_ids == ("color-0001", "color-0002", "color-0003")
    assert profile.flops.withdrawn.total == 600_000 and profile.latency.withdrawn.prefill_ms.median == 25.0
    assert profile.memory.baseline.cuda_peak_allocated_bytes is None
    assert profile.environment.torch == "2.13.0"
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.model.num_layers = 3  # type: ignore[misc]


def test_profile_to_dict_loses_nothing_and_reflects_replaced_fields(tmp_path):
    data = example_profile()
    data["x_extra"] = {"kept": True}
    data["flops"].pop("analytic")
    profile = P.load_profile(written(tmp_path, data))
    assert P.profile_to_dict(profile) == data
    updated = dataclasses.replace(profile, withdrawal=P.Withdrawal(layer=6))
    assert P.profile_to_dict(updated)["withdrawal"] == {"layer": 6}
    assert "analytic" not in P.profile_to_dict(updated)["flops"]
    again = P.load_profile(P.save_profile(updated, tmp_path / "q.yaml"))
    assert again == updated and again.raw["x_extra"] == {"kept": True}


def test_minimal_profile_types():
    data = {key: example_profile()[key] for key in ("schema_version", "created_at", "model", "environment")}
    profile = P.profile_from_dict(data)
    assert profile.calibration is None and profile.data == () and profile.layer is None
    assert P.profile_to_dict(profile) == data


# ----------------------------------------------------------------------------------------- apply

def tiny_profile(model, layer=2) -> dict:
    from vtwcli.loading import config_sha256
    from vtwcli.withdrawal import num_decoder_layers

    data = {key: example_profile()[key] for key in ("schema_version", "created_at", "environment")}
    data["model"] = {"name_or_path": "tiny", "architecture": type(model).__name__,
                     "num_layers": num_decoder_layers(model), "dtype": "float32", "device": "cpu",
                     "attn_implementation": "sdpa", "config_sha256": config_sha256(model.config)}
    if layer is not None:
        data["withdrawal"] = {"layer": layer}
    return data


def test_apply_profile_withdraws_at_the_profile_layer(tmp_path):
    model = tiny_llava(num_layers=4)
    path = written(tmp_path, tiny_profile(model, layer=3))
    handle = vtwcli.apply_profile(model, vtwcli.load_profile(path))
    try:
        assert handle.layer == 3
    finally:
        handle.remove()
    with vtwcli.apply_profile(model, path) as handle:  # a path works too
        assert handle.layer == 3


def test_apply_profile_refuses_another_model():
    made_for = tiny_llava(num_layers=4)
    other = tiny_llava(num_layers=3)
    data = tiny_profile(made_for)
    with pytest.raises(VtwError) as info:
        P.apply_profile(other, data)
    message = str(info.value)
    assert "num_layers profile=4 model=3" in message and "config_sha256 profile=" in message
    assert "architecture profile=" not in message  # same class: only what differs is named
    with pytest.warns(UserWarning, match="num_layers profile=4 model=3"):
        handle = P.apply_profile(other, data, strict=False)
    assert handle.layer == 2
    handle.remove()


def test_apply_profile_without_a_layer():
    model = tiny_llava(num_layers=4)
    with pytest.raises(VtwError, match="no withdrawal layer to apply"):
        P.apply_profile(model, tiny_profile(model, layer=None))


# ---------------------------------------------------------------------------------------- properties

def _read_text(text: str):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "p.yaml"
        path.write_text(text, encoding="utf-8")
        return P.read_profile_dict(path)


VALID_TEXT = P.dump_profile_yaml(example_profile())
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.text(max_size=200),
    st.text(alphabet=string.printable, max_size=200),
    yaml_values.map(lambda v: yaml.safe_dump(v)),
    yaml_values.map(lambda v: yaml.safe_dump({**example_profile(), "calibration": v})),
    st.integers(0, len(VALID_TEXT)).map(lambda n: VALID_TEXT[:n]),
    st.tuples(st.integers(0, len(VALID_TEXT) - 1), st.sampled_from(list(":-{}[]&*!|>'\"%@` \n\t#,?"))).map(
        lambda t: VALID_TEXT[: t[0]] + t[1] + VALID_TEXT[t[0] + 1:]),
))
def test_any_text_gives_a_profile_or_one_vtw_error(text):
    try:
        data = _read_text(text)
    except VtwError as error:
        assert "\n" not in str(error) and str(error)
    else:
        assert isinstance(data, dict) and data["schema_version"] == 1


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
small_text = st.text(max_size=12)


@st.composite
def valid_profiles(draw):
    data = example_profile(layer=draw(st.sampled_from([5, None])))
    data["model"]["name_or_path"] = draw(small_text)
    data["tool"]["command"] = draw(small_text)
    data["calibration"]["threshold"] = draw(st.floats(0, 10, allow_nan=False))
    for entry in data["calibration"]["per_layer"]:
        entry["kl_mean"] = draw(finite)
        entry["kl_ci_low"] = draw(st.none() | finite)
    data["data"][0]["sample_ids"] = draw(st.lists(small_text, max_size=5))
    data["flops"]["withdrawn"]["total"] = draw(st.integers(0, 2**70))
    data["latency"]["withdrawn"]["prefill_ms"]["median"] = draw(finite)
    data["environment"]["platform"] = draw(small_text)
    for section in draw(st.lists(st.sampled_from(["data", "calibration", "evaluation", "withdrawal", "flops",
                                                  "latency", "memory", "tool"]), unique=True, max_size=4)):
        data.pop(section, None)
    extra_keys = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=8).filter(
        lambda k: k not in P.SECTION_ORDER)
    data.update(draw(st.dictionaries(extra_keys, yaml_values, max_size=2)))
    return data


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_profiles())
def test_valid_profiles_roundtrip(data):
    with tempfile.TemporaryDirectory() as directory:
        first = P.load_profile(P.write_profile(copy.deepcopy(data), Path(directory) / "a.yaml"))
        assert first.raw == data
        second = P.load_profile(P.save_profile(first, Path(directory) / "b.yaml"))
        assert second == first and second.raw == first.raw
        assert P.profile_to_dict(second) == data


# -- one shape: the typed dataclasses against the JSON Schema ---------------------------------------------

def test_typed_profile_matches_the_schema():
    from vtwcli.profile.shape import shape_problems

    assert shape_problems() == []


def test_shape_check_catches_drift():
    """Each kind of drift between the schema and the dataclasses is named with its key path."""
    import copy

    from vtwcli.profile.shape import shape_problems

    shipped = P.schema()
    renamed = copy.deepcopy(shipped)
    props = renamed["properties"]["withdrawal"]["properties"]
    props["kinds_list"] = props.pop("kinds")
    assert shape_problems(renamed) == ["withdrawal.kinds_list: in the schema, not in Withdrawal",
                                       "withdrawal.kinds: in Withdrawal, not in the schema"]
    loosened = copy.deepcopy(shipped)
    loosened["properties"]["model"]["required"].remove("dtype")
    loosened["$defs"]["stats"]["properties"]["median"]["type"] = ["number", "null"]
    assert sorted(shape_problems(loosened)) == sorted([
        "model.dtype: optional in the schema but has no default in ModelInfo",
        "latency.baseline.prefill_ms.median: nullable in the schema but not Optional in TimingStats",
        "latency.baseline.decode_ms_per_token.median: nullable in the schema but not Optional in TimingStats",
        "latency.baseline.end_to_end_ms.median: nullable in the schema but not Optional in TimingStats",
        "latency.withdrawn.prefill_ms.median: nullable in the schema but not Optional in TimingStats",
        "latency.withdrawn.decode_ms_per_token.median: nullable in the schema but not Optional in TimingStats",
        "latency.withdrawn.end_to_end_ms.median: nullable in the schema but not Optional in TimingStats",
    ])
    retyped = copy.deepcopy(shipped)
    retyped["properties"]["model"]["properties"]["num_layers"]["type"] = "string"
    assert shape_problems(retyped) == ["model.num_layers: int in the dataclass, ['string'] in the schema"]
