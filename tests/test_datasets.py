"""The dataset layer: JSONL parsing and its one-line errors, bundled sets, sampling, prompts, batches, scoring."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vtwcli.datasets import (
    BUNDLED_DIR,
    Dataset,
    Sample,
    bundled_datasets,
    file_sha256,
    load_dataset,
    normalize_answer,
    sample_dataset,
)
from vtwcli.errors import VtwError
from vtwcli.prompts import build_prompt, load_images, make_batch, score_answer

# ---------------------------------------------------------------------------------------------- helpers


def _png(path: Path, mode: str = "RGB", size=(8, 6), color=(200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode in ("L", "1", "I", "F", "I;16"):
        color = 120 if mode != "1" else 1
    elif mode == "RGBA":
        color = (*color, 128)
    elif mode == "P":
        image = Image.new("RGB", size, color).convert("P")
        image.save(path)
        return path
    Image.new(mode, size, color).save(path)
    return path


def _write(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _row(i: int, **extra) -> dict:
    row = {"id": f"s-{i:03d}", "task": "color", "image": "images/a.png", "question": f"Q{i}?", "answer": "red"}
    row.update(extra)
    return row


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    _png(tmp_path / "images" / "a.png")
    _png(tmp_path / "images" / "b.png", color=(0, 0, 255))
    return tmp_path


@pytest.fixture
def twenty(folder: Path) -> Dataset:
    return load_dataset(_write(folder / "twenty.jsonl", [_row(i) for i in range(20)]))


def _error(source, tmp_path=None) -> str:
    with pytest.raises(VtwError) as info:
        load_dataset(source)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------- parsing


def test_valid_file_parses_all_fields(folder: Path) -> None:
    path = _write(
        folder / "mine.jsonl",
        [
            _row(1),
            "",  # blank lines are skipped, but line numbers keep counting
            {"id": 7, "image": str((folder / "images" / "b.png").resolve()), "question": "How many?", "answer": 3},
            {"id": "mc", "task": "mc", "images": ["images/a.png", "images/b.png"], "question": "Which?",
             "choices": ["A. dog", "B. cat"], "answer": "cat"},
        ],
    )
    dataset = load_dataset(path)
    assert dataset.name == "mine"
    assert dataset.path == path
    assert dataset.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [s.id for s in dataset.samples] == ["s-001", "7", "mc"]
    first, second, third = dataset.samples
    assert first.task == "color" and first.question == "Q1?" and first.answer == "red" and first.choices is None
    assert first.images == [folder / "images" / "a.png"] and first.line == 1 and first.file == path
    assert second.task == "qa" and second.answer == "3" and second.line == 3
    assert second.images == [(folder / "images" / "b.png").resolve()]
    # letter prefixes are stripped from choices and a text answer is stored as its letter
    assert third.choices == ["dog", "cat"] and third.answer == "B" and third.answer_text == "cat"
    assert len(third.images) == 2 and third.line == 4
    assert dataset.tasks == ["color", "mc", "qa"]
    assert len(set(dataset.samples)) == 3  # samples are hashable


def test_directory_with_data_jsonl_loads_under_the_directory_name(folder: Path) -> None:
    _write(folder / "data.jsonl", [_row(1)])
    dataset = load_dataset(folder)
    assert dataset.name == folder.name and dataset.path == folder / "data.jsonl"


def test_load_images_converts_modes_to_rgb(folder: Path) -> None:
    for mode in ("L", "RGBA", "P", "1"):
        _png(folder / "images" / f"{mode}.png", mode=mode)
    rows = [_row(i, image=f"images/{m}.png") for i, m in enumerate(("L", "RGBA", "P", "1"))]
    dataset = load_dataset(_write(folder / "modes.jsonl", rows))
    for sample in dataset.samples:
        (image,) = load_images(sample)
        assert image.mode == "RGB" and image.size == (8, 6)
    # alpha is composited on white: half-transparent red becomes pink, not red
    (rgba,) = load_images(dataset.samples[1])
    assert rgba.getpixel((0, 0))[1] > 100


# ---------------------------------------------------------------------------------------------- errors


def test_unknown_bundled_name_lists_known_names() -> None:
    message = _error("no_such_set")
    assert "unknown dataset 'no_such_set'" in message
    for info in bundled_datasets():
        assert info.name in message


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    message = _error(str(missing))
    assert str(missing) in message and "not found" in message


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n", encoding="utf-8")
    message = _error(path)
    assert str(path) in message and "empty" in message


def test_invalid_json_names_the_line(folder: Path) -> None:
    path = _write(folder / "bad.jsonl", [_row(1), _row(2), '{"id": "x", "question": '])
    message = _error(path)
    assert f"{path}:3" in message and "invalid JSON" in message


def test_non_object_line(folder: Path) -> None:
    path = _write(folder / "list.jsonl", [_row(1), "[1, 2]"])
    assert f"{path}:2" in _error(path)


def test_invalid_utf8_names_the_line(folder: Path) -> None:
    path = folder / "latin1.jsonl"
    path.write_bytes(json.dumps(_row(1)).encode() + b"\n\xff\xfe\n")
    message = _error(path)
    assert f"{path}:2" in message and "UTF-8" in message


@pytest.mark.parametrize("field", ["id", "question", "answer"])
def test_missing_field_names_file_line_and_field(folder: Path, field: str) -> None:
    bad = _row(2)
    del bad[field]
    path = _write(folder / "missing.jsonl", [_row(1), bad])
    message = _error(path)
    assert f"{path}:2" in message and repr(field) in message and "missing" in message


@pytest.mark.parametrize(
    ("field", "value"),
    [("question", 5), ("answer", ["red"]), ("answer", True), ("id", None), ("task", 1), ("question", "  "),
     ("choices", "A B"), ("choices", ["only one"]), ("images", "images/a.png"), ("image", 3)],
)
def test_ill_typed_field_names_the_line(folder: Path, field: str, value) -> None:
    path = _write(folder / "typed.jsonl", [_row(1), _row(2, **{field: value})])
    message = _error(path)
    assert f"{path}:2" in message and field in message


def test_duplicate_id(folder: Path) -> None:
    path = _write(folder / "dup.jsonl", [_row(1), _row(2), _row(1)])
    message = _error(path)
    assert f"{path}:3" in message and "duplicate id 's-001'" in message and "line 1" in message


def test_sample_without_image(folder: Path) -> None:
    row = _row(2)
    del row["image"]
    path = _write(folder / "noimage.jsonl", [_row(1), row])
    message = _error(path)
    assert f"{path}:2" in message and "no image" in message
    path = _write(folder / "emptyimages.jsonl", [_row(1), {**row, "images": []}])
    assert f"{path}:2" in _error(path)


def test_missing_image_names_line_and_path(folder: Path) -> None:
    path = _write(folder / "gone.jsonl", [_row(1), _row(2, image="images/gone.png")])
    message = _error(path)
    assert f"{path}:2" in message and str(folder / "images" / "gone.png") in message and "not found" in message


def test_corrupt_image(folder: Path) -> None:
    (folder / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (folder / "images" / "text.jpg").write_text("not an image")
    for name in ("broken.png", "text.jpg"):
        path = _write(folder / "corrupt.jsonl", [_row(1), _row(2, image=f"images/{name}")])
        message = _error(path)
        assert f"{path}:2" in message and name in message and "corrupt" in message


def test_truncated_image_fails_when_decoded(folder: Path) -> None:
    good = folder / "images" / "big.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(good)
    truncated = folder / "images" / "cut.png"
    truncated.write_bytes(good.read_bytes()[:200])
    path = _write(folder / "cut.jsonl", [_row(1, image="images/cut.png")])
    with pytest.raises(VtwError) as info:
        dataset = load_dataset(path)  # verify() may or may not catch it; decoding must
        load_images(dataset.samples[0])
    assert f"{path}:1" in str(info.value) and "cut.png" in str(info.value)


def test_unsupported_mode_is_refused(folder: Path) -> None:
    Image.new("I;16", (4, 4), 60000).save(folder / "images" / "deep.png")
    path = _write(folder / "deep.jsonl", [_row(1, image="images/deep.png")])
    message = _error(path)
    assert f"{path}:1" in message and "mode" in message and "deep.png" in message


def test_bad_choice_answer(folder: Path) -> None:
    path = _write(folder / "mc.jsonl", [_row(1, choices=["dog", "cat"], answer="horse")])
    message = _error(path)
    assert f"{path}:1" in message and "letter" in message
    path = _write(folder / "mc2.jsonl", [_row(1, choices=["dog", "cat"], answer="C")])
    assert f"{path}:1" in _error(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300),
        st.lists(
            st.dictionaries(
                st.sampled_from(["id", "task", "image", "images", "question", "answer", "choices", "x"]),
                st.recursive(
                    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
                    max_leaves=6,
                ),
                max_size=7,
            ).map(json.dumps),
            max_size=4,
        ).map("\n".join),
        st.lists(  # near-valid rows with one field replaced by junk or dropped
            st.tuples(
                st.sampled_from(["id", "task", "image", "images", "question", "answer", "choices"]),
                st.none() | st.integers() | st.text(max_size=8) | st.lists(st.text(max_size=8), max_size=3)
                | st.just("images/a.png") | st.just(["dog", "cat"]) | st.just("DROP"),
            ),
            min_size=1,
            max_size=4,
        ).map(lambda edits: "\n".join(
            json.dumps({k: v for k, v in {**_row(i), key: value}.items() if v != "DROP"}) for i, (key, value) in enumerate(edits)
        )),
    )
)
def test_arbitrary_content_only_ever_raises_vtwerror(tmp_path_factory, content) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    _png(folder / "images" / "a.png")
    path = folder / "fuzz.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", errors="surrogatepass"))
    try:
        dataset = load_dataset(path)
    except VtwError as error:
        assert "\n" not in str(error)
    else:
        assert dataset.samples
        for sample in dataset.samples:
            load_images(sample)


# ---------------------------------------------------------------------------------------------- sampling


def test_sampling_is_seeded_random_and_validated(twenty: Dataset) -> None:
    first = [s.id for s in sample_dataset(twenty, 5, seed=0)]
    assert first == [s.id for s in sample_dataset(twenty, 5, seed=0)]
    assert len(set(first)) == 5
    assert first == sorted(first)  # returned in file order
    draws = {tuple(s.id for s in sample_dataset(twenty, 5, seed=seed)) for seed in range(10)}
    assert len(draws) > 1
    first_five = tuple(s.id for s in twenty.samples[:5])
    assert any(draw != first_five for draw in draws) and tuple(first) != first_five
    # one seed: a smaller draw is a subset of a larger one
    assert set(first) <= {s.id for s in sample_dataset(twenty, 12, seed=0)}
    assert sample_dataset(twenty, None, seed=3) == twenty.samples
    assert len(sample_dataset(twenty, 20, seed=1)) == 20
    for bad in (0, -1, 21):
        with pytest.raises(VtwError, match="20"):
            sample_dataset(twenty, bad, seed=0)


# ---------------------------------------------------------------------------------------------- scoring


def _sample(answer: str, choices=None) -> Sample:
    return Sample(id="x", task="t", images=[Path("a.png")], question="q", answer=answer, choices=choices)


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("red", "red", True),
        (" Red. ", "red", True),
        ("The cat", "cat", True),
        ("a cat!", "cat", True),
        ("two", "2", True),
        ("Answer: 2", "2", True),
        ("black-and-white", "black and white", True),
        ("reddish", "red", False),
        ("red car", "red", False),
        ("", "red", False),
        ("blue", "red", False),
    ],
)
def test_score_open_answers(prediction: str, answer: str, expected: bool) -> None:
    assert score_answer(prediction, _sample(answer)) is expected


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("B", True), ("b", True), ("B.", True), ("(B)", True), ("b) cat", True), ("B: cat", True),
        ("Answer: B", True), ("The answer is B.", True), ("cat", True), ("The cat.", True),
        ("A", False), ("(A)", False), ("a) dog", False), ("dog", False), ("A cat", True), ("E", False), ("", False),
    ],
)
def test_score_multiple_choice(prediction: str, expected: bool) -> None:
    assert score_answer(prediction, _sample("B", ["dog", "cat", "horse", "bird"])) is expected


def test_normalize_answer() -> None:
    assert normalize_answer("  The Black-and-White PHOTO. ") == "black and white photo"
    assert normalize_answer("An eye") == "eye"


# ---------------------------------------------------------------------------------------------- bundled + CLI


def test_bundled_datasets_load_and_answer_themselves() -> None:
    infos = {info.name: info for info in bundled_datasets()}
    assert {"photo_vqa", "photo_mc"} <= set(infos)
    for name in ("photo_vqa", "photo_mc"):
        info = infos[name]
        dataset = load_dataset(name)
        assert dataset.bundled and dataset.name == name and len(dataset) == info.num_samples >= 20
        assert info.sha256 == dataset.sha256 == hashlib.sha256((BUNDLED_DIR / name / "data.jsonl").read_bytes()).hexdigest()
        assert "CC0" in info.licence and info.description
        for sample in dataset.samples:
            assert score_answer(sample.answer_text, sample)
        assert all(load_images(s)[0].mode == "RGB" for s in dataset.samples[:3])
    assert all(s.choices for s in load_dataset("photo_mc").samples)
    sizes = sum(p.stat().st_size for n in ("photo_vqa", "photo_mc") for p in (BUNDLED_DIR / n).rglob("*") if p.is_file())
    assert sizes < 2 * 1024 * 1024


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 3_000_000)
    assert file_sha256(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    with pytest.raises(VtwError):
        file_sha256(tmp_path / "missing")


def test_cli_datasets_json_and_table() -> None:
    from typer.testing import CliRunner

    from vtwcli.cli import app

    result = CliRunner().invoke(app, ["datasets", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) >= 2
    by_name = {row["name"]: row for row in rows}
    for name in ("photo_vqa", "photo_mc"):
        expected = hashlib.sha256((BUNDLED_DIR / name / "data.jsonl").read_bytes()).hexdigest()
        assert by_name[name]["sha256"] == expected
        lines = (BUNDLED_DIR / name / "data.jsonl").read_text().splitlines()
        assert by_name[name]["samples"] == len([line for line in lines if line.strip()])
    table = CliRunner().invoke(app, ["datasets"])
    assert table.exit_code == 0 and "photo_mc" in table.stdout and by_name["photo_mc"]["sha256"][:12] in table.stdout


# ---------------------------------------------------------------------------------------------- prompts + batches


def _processor(chat_template: str | None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    words = "<pad> <unk> <image> USER ASSISTANT : what animal is in the picture ? a b c d".split()
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", extra_special_tokens={"image_token": "<image>"}
    )
    images = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=14,
                          vision_feature_select_strategy="default", chat_template=chat_template)


TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_build_prompt_with_and_without_chat_template(folder: Path) -> None:
    path = _write(folder / "p.jsonl", [
        _row(1, question="What animal is in the picture?", choices=["dog", "cat"], answer="B"),
        _row(2, images=["images/a.png", "images/b.png"], image=None),
    ])
    mc, two = load_dataset(path).samples
    plain = build_prompt(_processor(None), mc)
    assert plain == "USER: <image>\nWhat animal is in the picture?\nA. dog\nB. cat\nAnswer with the option's letter.\nASSISTANT:"
    assert build_prompt(_processor(None), two) == "USER: <image>\n<image>\nQ2?\nASSISTANT:"
    templated = build_prompt(_processor(TEMPLATE), mc)
    assert templated == (
        "<|user|><image>What animal is in the picture?\nA. dog\nB. cat\nAnswer with the option's letter.<|end|><|assistant|>"
    )
    assert build_prompt(_processor(TEMPLATE), two).count("<image>") == 2
    broken = _processor("{{ raise_exception('no images allowed') }}")
    with pytest.raises(VtwError, match="chat template"):
        build_prompt(broken, mc)


def test_make_batch_left_pads(folder: Path) -> None:
    path = _write(folder / "b.jsonl", [
        _row(1, question="What animal is in the picture?"),
        _row(2, question="What?", image="images/b.png"),
    ])
    samples = load_dataset(path).samples
    processor = _processor(None)
    processor.tokenizer.padding_side = "right"
    batch = make_batch(processor, samples)
    assert processor.tokenizer.padding_side == "left"
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 2
    assert batch["pixel_values"].shape[0] == 2
    mask = batch["attention_mask"]
    shorter = int(mask.sum(dim=1).argmin())
    assert mask[shorter, 0] == 0 and mask[shorter, -1] == 1  # padding on the left
    assert (batch["input_ids"][mask == 0] == processor.tokenizer.pad_token_id).all()
    with pytest.raises(VtwError):
        make_batch(processor, [])


# ---------------------------------------------------------------------------------------------- metadata


def test_metadata_from_front_matter_bullets_and_meta_json(folder: Path) -> None:
    _write(folder / "data.jsonl", [_row(1)])
    readme = folder / "README.md"
    readme.write_text("---\ndescription: Front matter wins\nlicense: MIT\n---\n# x\n\nBody line.\n")
    dataset = load_dataset(folder)
    assert (dataset.description, dataset.licence) == ("Front matter wins", "MIT")
    readme.write_text(
        "# synthetic_x\n\n40 synthetic samples for testing\nthe loader. More text.\n\n"
        "- **Task**: shapes.\n- **Source**: generated by `make.py` with seed 1 (per-task\n  seed 2), held out.\n"
        "- **Licence**: CC0 1.0 (public domain dedication); generated by the project.\n"
    )
    dataset = load_dataset(folder)
    assert dataset.description == "40 synthetic samples for testing the loader"
    assert dataset.licence == "CC0 1.0 (public domain dedication)"
    assert dataset.source == "generated by make.py with seed 1 (per-task seed 2), held out"
    (folder / "meta.json").write_text(json.dumps({"description": "From meta.json", "license": "CC-BY-4.0"}))
    dataset = load_dataset(folder)
    assert (dataset.description, dataset.licence) == ("From meta.json", "CC-BY-4.0")
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(VtwError, match="meta.json"):
        load_dataset(folder)
