#!/usr/bin/env python
"""Regenerate the bundled real-photograph datasets ``photo_vqa`` and ``photo_mc``.

Source images: the sample photographs that ship inside the scikit-image wheel (``skimage/data``), only
those whose scikit-image docstring says CC0 or public domain. No download: the script reads the files
installed in the current environment. Images are cropped/flipped/greyscaled into distinct views,
shrunk to at most 336 px on the long side and saved as JPEG. The questions and answers below were
written by hand for vtwcli.

    .venv/bin/python scripts/make_photo_datasets.py        # rewrites vtwcli/data/datasets/photo_*/
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import skimage
from PIL import Image, ImageOps

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
OUT = Path(__file__).resolve().parent.parent / "vtwcli" / "data" / "datasets"
MAX_SIDE = 336

# source file -> (licence statement quoted from scikit-image's docstring, credit)
SOURCES = {
    "astronaut.png": ("public domain (NASA)", "NASA portrait of astronaut Eileen Collins, NASA Great Images database"),
    "camera.png": ("CC0", "Lav Varshney"),
    "chelsea.png": ("CC0", "Stefan van der Walt"),
    "coffee.png": ("CC0", "Rachel Michetti, courtesy of Pikolo Espresso Bar"),
    "rocket.jpg": ("public domain (SpaceX)", "SpaceX, DSCOVR launch on Falcon 9"),
    "hubble_deep_field.jpg": ("public domain (NASA)", "NASA / HubbleSite, Hubble eXtreme Deep Field"),
    "retina.jpg": ("CC0 1.0", "Mikael Häggström, via Wikimedia Commons"),
    "brick.png": ("CC0 1.0", "CC0Textures (Bricks25)"),
    "grass.png": ("CC0 1.0", "CC0Textures"),
    "gravel.png": ("CC0 1.0", "CC0Textures (Gravel04)"),
}

# view name -> (source file, crop box in source pixels or None, flip?, greyscale?)
VIEWS = {
    "astronaut": ("astronaut.png", None, False, False),
    "astronaut-face": ("astronaut.png", (140, 0, 330, 210), False, False),
    "astronaut-flag": ("astronaut.png", (0, 0, 130, 400), False, False),
    "astronaut-shuttle": ("astronaut.png", (380, 0, 512, 300), False, False),
    "astronaut-helmet": ("astronaut.png", (280, 300, 512, 512), False, False),
    "camera": ("camera.png", None, False, False),
    "camera-tripod": ("camera.png", (200, 190, 430, 512), False, False),
    "camera-skyline": ("camera.png", (300, 80, 512, 250), False, False),
    "chelsea": ("chelsea.png", None, False, False),
    "chelsea-flipped": ("chelsea.png", None, True, False),
    "chelsea-eye": ("chelsea.png", (105, 50, 245, 180), False, False),
    "coffee": ("coffee.png", None, False, False),
    "coffee-spoon": ("coffee.png", (310, 50, 430, 340), False, False),
    "coffee-grey": ("coffee.png", None, False, True),
    "rocket": ("rocket.jpg", None, False, False),
    "rocket-lights": ("rocket.jpg", (0, 230, 640, 427), False, False),
    "hubble": ("hubble_deep_field.jpg", None, False, False),
    "hubble-crop": ("hubble_deep_field.jpg", (500, 0, 1000, 436), True, False),
    "retina": ("retina.jpg", None, False, False),
    "brick": ("brick.png", None, False, False),
    "grass": ("grass.png", None, False, False),
    "gravel": ("gravel.png", None, False, False),
}

# Open questions, short answers: (id, task, view, question, answer)
VQA = [
    ("vqa-001", "object", "chelsea", "What animal is shown in this photo?", "cat"),
    ("vqa-002", "object", "chelsea-flipped", "What kind of animal is this?", "cat"),
    ("vqa-003", "count", "chelsea", "How many eyes of the animal can you see?", "2"),
    ("vqa-004", "object", "coffee", "What drink is in the cup?", "coffee"),
    ("vqa-005", "object", "coffee", "What utensil is lying on the saucer?", "spoon"),
    ("vqa-006", "color", "coffee", "What color is the saucer?", "red"),
    ("vqa-007", "count", "coffee", "How many cups are in the photo?", "1"),
    ("vqa-008", "attribute", "coffee", "Is the table made of wood or of glass?", "wood"),
    ("vqa-009", "attribute", "coffee-grey", "Is this photo in color or in black and white?", "black and white"),
    ("vqa-010", "object", "coffee-spoon", "Which utensil is on the saucer: a spoon, a fork or a knife?", "spoon"),
    ("vqa-011", "color", "astronaut", "What color is the person's suit?", "orange"),
    ("vqa-012", "yesno", "astronaut-face", "Is the person smiling? Answer yes or no.", "yes"),
    ("vqa-013", "attribute", "astronaut-face", "Is this person a man or a woman?", "woman"),
    ("vqa-014", "object", "astronaut-helmet", "Is this a helmet or a hat?", "helmet"),
    ("vqa-015", "count", "astronaut", "How many helmets are in the photo?", "1"),
    ("vqa-016", "object", "rocket", "What vehicle stands in the middle of the photo?", "rocket"),
    ("vqa-017", "color", "rocket", "What color is the sky?", "blue"),
    ("vqa-018", "yesno", "rocket", "Is the rocket flying? Answer yes or no.", "no"),
    ("vqa-019", "object", "camera", "What is the man looking through?", "camera"),
    ("vqa-020", "object", "camera-tripod", "What three-legged stand is shown?", "tripod"),
    ("vqa-021", "attribute", "camera", "Is this photo in color or in black and white?", "black and white"),
    ("vqa-022", "yesno", "camera", "Is the man wearing a coat? Answer yes or no.", "yes"),
    ("vqa-023", "attribute", "camera", "Does grass or sand cover the ground?", "grass"),
    ("vqa-024", "object", "hubble", "Does this picture show galaxies or cells?", "galaxies"),
    ("vqa-025", "color", "hubble-crop", "What color is the background?", "black"),
    ("vqa-026", "object", "retina", "Which organ of the body is photographed here?", "eye"),
    ("vqa-027", "object", "brick", "Is this surface made of bricks or of wood?", "bricks"),
    ("vqa-028", "object", "grass", "Is this a close-up of grass or of sand?", "grass"),
    ("vqa-029", "object", "gravel", "Is this a close-up of gravel or of water?", "gravel"),
    ("vqa-030", "yesno", "gravel", "Is there a person in this photo? Answer yes or no.", "no"),
    ("vqa-031", "yesno", "chelsea", "Is there a dog in this photo? Answer yes or no.", "no"),
    ("vqa-032", "object", "camera-skyline", "Are there buildings or mountains in this picture?", "buildings"),
]

# Multiple choice: (id, task, view, question, choices, answer letter)
MC = [
    ("mc-001", "object", "chelsea", "What animal is in the picture?", ["dog", "cat", "horse", "bird"], "B"),
    ("mc-002", "object", "chelsea-flipped", "What animal is in the picture?", ["cat", "rabbit", "dog", "fox"], "A"),
    ("mc-003", "object", "chelsea-eye", "What does this close-up show?", ["a wheel", "a flower", "an eye", "a coin"], "C"),
    ("mc-004", "count", "chelsea", "How many eyes of the animal are visible?", ["1", "2", "3", "4"], "B"),
    ("mc-005", "object", "coffee", "What is in the cup?", ["orange juice", "water", "milk", "coffee"], "D"),
    ("mc-006", "attribute", "coffee", "What is the table made of?", ["glass", "wood", "metal", "stone"], "B"),
    ("mc-007", "object", "coffee-spoon", "What is lying on the saucer next to the cup?", ["a fork", "a knife", "a spoon", "chopsticks"], "C"),
    ("mc-008", "color", "coffee", "What color is the saucer?", ["blue", "green", "red", "white"], "C"),
    ("mc-009", "count", "coffee", "How many spoons are on the saucer?", ["0", "1", "2", "3"], "B"),
    ("mc-010", "attribute", "coffee-grey", "Is this image in color?", ["yes", "no"], "B"),
    ("mc-011", "object", "astronaut", "What is this person's job most likely?", ["chef", "astronaut", "doctor", "farmer"], "B"),
    ("mc-012", "color", "astronaut", "What color is the person's suit?", ["green", "black", "orange", "white"], "C"),
    ("mc-013", "object", "astronaut-flag", "Which country's flag is this?", ["United States", "France", "Japan", "Canada"], "A"),
    ("mc-014", "object", "astronaut-shuttle", "What is this a model of?", ["a sailing ship", "a car", "a train", "a space shuttle"], "D"),
    ("mc-015", "object", "astronaut-helmet", "What is the large black and white object?", ["a bucket", "a helmet", "a lamp", "a bowling pin"], "B"),
    ("mc-016", "yesno", "astronaut-face", "Is the person smiling?", ["yes", "no"], "A"),
    ("mc-017", "object", "rocket", "What stands in the middle of the photo?", ["a lighthouse", "a chimney", "a rocket", "a tree"], "C"),
    ("mc-018", "scene", "rocket", "When was this photo most likely taken?", ["at midday", "at dusk", "during a snowstorm", "underwater"], "B"),
    ("mc-019", "object", "rocket-lights", "What are the bright points of light?", ["stars", "candles", "floodlights", "fireworks"], "C"),
    ("mc-020", "object", "camera", "What is the man holding?", ["an umbrella", "a camera", "a guitar", "a book"], "B"),
    ("mc-021", "object", "camera-tripod", "What is holding the camera up?", ["a tripod", "a chair", "a table", "a bicycle"], "A"),
    ("mc-022", "attribute", "camera", "What kind of photo is this?", ["a color photo", "a black-and-white photo"], "B"),
    ("mc-023", "scene", "camera-skyline", "What is in the picture?", ["mountains", "the sea", "a forest", "buildings"], "D"),
    ("mc-024", "scene", "camera", "Where was this photo taken?", ["on a lawn outdoors", "in a kitchen", "on a beach", "in a forest"], "A"),
    ("mc-025", "scene", "hubble", "What does this image show?", ["galaxies in deep space", "grains of sand", "city lights at night", "blood cells"], "A"),
    ("mc-026", "scene", "hubble-crop", "What does this image show?", ["a snowfall", "fireflies in a garden", "galaxies in deep space", "a microchip"], "C"),
    ("mc-027", "object", "retina", "What does this image show?", ["a sunset", "the inside of an eye", "a tomato", "a sliced orange"], "B"),
    ("mc-028", "object", "retina", "What are the dark red branching lines?", ["blood vessels", "rivers", "cracks", "roads"], "A"),
    ("mc-029", "object", "brick", "What is this surface?", ["a wooden floor", "water", "brick paving", "a carpet"], "C"),
    ("mc-030", "object", "grass", "What is this a close-up of?", ["fur", "grass", "hair", "carpet"], "B"),
    ("mc-031", "object", "gravel", "What is this a close-up of?", ["rice", "snow", "coins", "gravel"], "D"),
    ("mc-032", "color", "rocket", "What color is the rocket?", ["white", "red", "black", "yellow"], "A"),
]

README = """---
description: {description}
licence: CC0 / public domain
source: scikit-image {skversion} sample photographs (skimage/data), resized; questions hand-written for vtwcli
---
# {name}

{description}. {count} samples over {nimages} images.

## Images

Real photographs from the sample data that ships inside scikit-image ({skversion}), under
`skimage/data/`. Only images that scikit-image's own documentation (the docstrings in
`skimage/data/_fetchers.py`) marks as CC0 or public domain are used:

| file here | source file | licence | credit |
|---|---|---|---|
{table}

The images were cropped, mirrored or converted to greyscale to get distinct views, shrunk to at most
{max_side} px on the long side and saved as JPEG by `scripts/make_photo_datasets.py`.

## Questions and answers

Written by hand by the vtwcli authors for this dataset (not taken from any benchmark), and
distributed under the project's licence (Apache-2.0). {answers}

Regenerate with `.venv/bin/python scripts/make_photo_datasets.py`.
"""


def render_view(name: str) -> Image.Image:
    source, box, flip, grey = VIEWS[name]
    with Image.open(SKIMAGE_DATA / source) as image:
        image = image.convert("RGB") if image.mode not in ("L", "RGB") else image.copy()
    if box is not None:
        image = image.crop(box)
    if flip:
        image = ImageOps.mirror(image)
    if grey:
        image = image.convert("L")
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return image


def write_set(name: str, description: str, rows: list[dict], answers_note: str) -> None:
    directory = OUT / name
    if directory.exists():
        shutil.rmtree(directory)
    (directory / "images").mkdir(parents=True)
    views = sorted({row["view"] for row in rows})
    for view in views:
        render_view(view).save(directory / "images" / f"{view}.jpg", quality=85, optimize=True)
    with open(directory / "data.jsonl", "w", encoding="utf-8") as handle:
        for row in rows:
            view = row.pop("view")
            record = {"id": row["id"], "task": row["task"], "image": f"images/{view}.jpg", **{k: v for k, v in row.items() if k not in ("id", "task")}}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    table = "\n".join(
        f"| images/{view}.jpg | {VIEWS[view][0]} | {SOURCES[VIEWS[view][0]][0]} | {SOURCES[VIEWS[view][0]][1]} |"
        for view in views
    )
    (directory / "README.md").write_text(
        README.format(
            name=name,
            description=description,
            count=len(rows),
            nimages=len(views),
            skversion=skimage.__version__,
            table=table,
            max_side=MAX_SIDE,
            answers=answers_note,
        ),
        encoding="utf-8",
    )
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    print(f"{name}: {len(rows)} samples, {len(views)} images, {size / 1024:.0f} KiB")


def main() -> None:
    write_set(
        "photo_vqa",
        "Short-answer questions about real photographs",
        [{"id": i, "task": t, "view": v, "question": q, "answer": a} for i, t, v, q, a in VQA],
        "Answers are one or a few words (numbers as digits) and are scored by normalised exact match.",
    )
    write_set(
        "photo_mc",
        "Multiple-choice questions about real photographs",
        [{"id": i, "task": t, "view": v, "question": q, "choices": c, "answer": a} for i, t, v, q, c, a in MC],
        "Each sample has 2-4 `choices`; `answer` is the correct option's letter.",
    )


if __name__ == "__main__":
    main()
