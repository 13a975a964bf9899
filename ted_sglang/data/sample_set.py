"""A small multimodal sample set, generated from a seed with exact answers.

Five kinds of question, each its own category, mixing multiple choice and
numbers:

- ``counting``: how many shapes of a colour and/or kind are drawn (number);
- ``chart_max``: which bar of a bar chart is the tallest/shortest (choice);
- ``chart_value``: the value of one bar, read against the axis (number);
- ``size_compare``: which of several same-kind shapes is the largest/smallest (choice);
- ``arithmetic``: a sum, difference or product of numbers drawn in colours (number).

Each row keeps the ``scene`` it was drawn from, so its answer can be checked,
and an ``image_description`` derived from it: the picture in words, for models
that read text only (what the image shows, never the answer to the question).
Every question text is unique across the set; items alternate between the
``train`` and ``test`` splits within each category, so the splits share
neither ids nor questions. Same seed and count, same bytes.

Layout written by :func:`~ted_sglang.data.sample_files.write_sample_set`::

    OUTDIR/samples.jsonl
    OUTDIR/images/<id>.png
"""

from __future__ import annotations

import random
from typing import Any

from ted_sglang.data.sample import LETTERS

DEFAULT_COUNT = 32
CATEGORIES = ("counting", "chart_max", "size_compare", "chart_value", "arithmetic")
COLOURS = {
    "red": (220, 40, 40),
    "blue": (40, 90, 220),
    "green": (30, 150, 60),
    "orange": (240, 140, 20),
    "purple": (130, 60, 180),
}
SHAPES = ("circle", "square", "triangle")
TOPICS = {
    "fruit sold": ("apple", "pear", "plum", "fig", "kiwi", "lime", "peach"),
    "visitors per day": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    "rainy days per month": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul"),
    "books read": ("Ann", "Ben", "Cai", "Dev", "Eva", "Finn", "Gus"),
    "pets in a class": ("cat", "dog", "fish", "bird", "frog", "hare", "mouse"),
    "goals scored": ("Reds", "Blues", "Lions", "Owls", "Foxes", "Bees", "Rams"),
    "trees planted": ("oak", "ash", "elm", "pine", "fir", "yew", "birch"),
    "ice creams sold": ("mint", "lemon", "cocoa", "nut", "berry", "mango", "melon"),
}
IMAGE_SIZE = 192  # shapes and numbers
CHART_SIZE = 224  # bar charts
GRID = 4  # counting scenes place shapes in a GRID x GRID layout of cells
SIZES = (24, 32, 40, 48, 56)  # size_compare diameters, in pixels
CHART_MAX = 10


def _asks(category: str) -> list[tuple]:
    """Every question a category can ask; each gives a distinct question text."""
    colours, shapes = list(COLOURS), list(SHAPES)
    if category == "counting":
        pairs = [(c, s) for c in colours for s in shapes]
        return pairs + [(None, s) for s in shapes] + [(c, None) for c in colours]
    if category == "chart_max":
        return [(t, w) for t in TOPICS for w in ("tallest", "shortest")]
    if category == "chart_value":
        return [(t, label) for t, labels in TOPICS.items() for label in labels]
    if category == "size_compare":
        return [(s, w, n) for s in shapes for w in ("largest", "smallest") for n in (3, 4)]
    assert category == "arithmetic"
    ops = ("plus", "minus", "times")
    return [(op, a, b) for op in ops for a in colours for b in colours if a != b]


MAX_COUNT = sum(len(_asks(c)) for c in CATEGORIES)


def generate_rows(count: int = DEFAULT_COUNT, seed: int = 0) -> list[dict[str, Any]]:
    """The rows of the sample set (image paths ``images/<id>.png``), without drawing."""
    if not 2 <= count <= MAX_COUNT:
        raise ValueError(f"count must be between 2 and {MAX_COUNT}, got {count}")
    rng = random.Random(seed)
    remaining = {c: _asks(c) for c in CATEGORIES}
    per_category = dict.fromkeys(CATEGORIES, 0)
    rows = []
    turn = 0
    while len(rows) < count:
        category = CATEGORIES[turn % len(CATEGORIES)]
        turn += 1
        if not remaining[category]:
            continue
        ask = remaining[category].pop(rng.randrange(len(remaining[category])))
        row = _BUILDERS[category](rng, ask)
        sample_id = f"{category}-{len(rows):03d}"
        # Alternate within a category, starting on a different side per category,
        # so both splits get every category and about half of the set.
        split = (
            "train" if (per_category[category] + CATEGORIES.index(category)) % 2 == 0 else "test"
        )
        per_category[category] += 1
        rows.append(
            {
                "id": sample_id,
                "question": row["question"],
                "image": f"images/{sample_id}.png",
                "image_description": describe_scene(category, row["scene"]),
                **({"options": row["options"]} if "options" in row else {}),
                "answer": row["answer"],
                "answer_type": "choice" if "options" in row else "number",
                "category": category,
                "split": split,
                "scene": row["scene"],
            }
        )
    return rows


def describe_scene(category: str, scene: dict[str, Any]) -> str:
    """The image of a scene in words: what is drawn, as a person would list it."""
    if category == "counting":
        counts: dict[tuple[str, str], int] = {}
        for item in scene["shapes"]:
            key = (item["colour"], item["shape"])
            counts[key] = counts.get(key, 0) + 1
        parts = [f"{n} {c} {s}{'' if n == 1 else 's'}" for (c, s), n in sorted(counts.items())]
        return f"The image shows {_listing(parts)}, scattered over a white background."
    if category in ("chart_max", "chart_value"):
        bars = ", ".join(f"{b['label']} {b['value']}" for b in scene["bars"])
        return (
            f'A bar chart titled "{scene["title"]}" with an axis from 0 to {scene["max"]}; '
            f"the bars, left to right, reach: {bars}."
        )
    if category == "size_compare":
        parts = [
            f"{_article(item['colour'])} {item['colour']} {item['shape']} "
            f"{item['box'][2] - item['box'][0]} pixels wide"
            for item in scene["shapes"]
        ]
        return f"The image shows {_listing(parts)}."
    assert category == "arithmetic", category
    parts = [f"the number {n['value']} written in {n['colour']}" for n in scene["numbers"]]
    return f"The image shows, from top to bottom, {_listing(parts)}."


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _listing(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# --- one builder per category: (rng, ask) -> question, answer, options, scene ---


def _counting(rng: random.Random, ask: tuple) -> dict[str, Any]:
    colour, shape = ask

    def matches(item: tuple[str, str]) -> bool:
        return (colour is None or item[0] == colour) and (shape is None or item[1] == shape)

    everything = [(c, s) for c in COLOURS for s in SHAPES]
    wanted = rng.randint(1, 6)
    items = [rng.choice([i for i in everything if matches(i)]) for _ in range(wanted)]
    items += [
        rng.choice([i for i in everything if not matches(i)]) for _ in range(rng.randint(2, 6))
    ]
    rng.shuffle(items)
    cells = rng.sample(range(GRID * GRID), len(items))
    cell = IMAGE_SIZE // GRID
    shapes = []
    for (c, s), index in zip(items, cells, strict=True):
        size = rng.randint(26, 36)
        x0 = (index % GRID) * cell + rng.randint(3, cell - size - 3)
        y0 = (index // GRID) * cell + rng.randint(3, cell - size - 3)
        shapes.append({"shape": s, "colour": c, "box": [x0, y0, x0 + size, y0 + size]})
    if colour and shape:
        question = f"How many {colour} {shape}s are in the image?"
    elif shape:
        question = f"How many {shape}s are in the image, of any colour?"
    else:
        question = f"How many {colour} shapes are in the image?"
    scene = {"shapes": shapes, "ask": {"colour": colour, "shape": shape}}
    return {"question": question, "answer": str(wanted), "scene": scene}


def _bars(rng: random.Random, topic: str, distinct: bool) -> list[dict[str, Any]]:
    labels = sorted(rng.sample(range(len(TOPICS[topic])), 4))
    values = (
        rng.sample(range(1, CHART_MAX + 1), 4)
        if distinct
        else [rng.randint(1, CHART_MAX) for _ in labels]
    )
    return [{"label": TOPICS[topic][i], "value": v} for i, v in zip(labels, values, strict=True)]


def _chart_max(rng: random.Random, ask: tuple) -> dict[str, Any]:
    topic, which = ask
    bars = _bars(rng, topic, distinct=True)
    pick = max if which == "tallest" else min
    best = pick(range(len(bars)), key=lambda i: bars[i]["value"])
    return {
        "question": f"The bar chart shows {topic}. Which bar is the {which}?",
        "options": [b["label"] for b in bars],
        "answer": LETTERS[best],
        "scene": {"title": topic, "bars": bars, "max": CHART_MAX, "ask": {"which": which}},
    }


def _chart_value(rng: random.Random, ask: tuple) -> dict[str, Any]:
    topic, label = ask
    bars = _bars(rng, topic, distinct=False)
    if label not in [b["label"] for b in bars]:
        bars[rng.randrange(len(bars))]["label"] = label
        order = TOPICS[topic].index
        bars.sort(key=lambda b: order(b["label"]))
    value = next(b["value"] for b in bars if b["label"] == label)
    return {
        "question": f"The bar chart shows {topic}. What is the value of the bar labelled {label}?",
        "answer": str(value),
        "scene": {"title": topic, "bars": bars, "max": CHART_MAX, "ask": {"label": label}},
    }


def _size_compare(rng: random.Random, ask: tuple) -> dict[str, Any]:
    shape, which, n = ask
    colours = rng.sample(list(COLOURS), n)
    sizes = rng.sample(SIZES, n)
    cell = IMAGE_SIZE // 2
    shapes = []
    for index, (colour, size) in enumerate(zip(colours, sizes, strict=True)):
        x0 = (index % 2) * cell + rng.randint(4, cell - size - 4)
        y0 = (index // 2) * cell + rng.randint(4, cell - size - 4)
        shapes.append({"shape": shape, "colour": colour, "box": [x0, y0, x0 + size, y0 + size]})
    pick = max if which == "largest" else min
    best = pick(range(n), key=lambda i: sizes[i])
    return {
        "question": f"The image shows {n} {shape}s of different colours. "
        f"Which {shape} is the {which}?",
        "options": colours,
        "answer": LETTERS[best],
        "scene": {"shapes": shapes, "ask": {"which": which}},
    }


def _arithmetic(rng: random.Random, ask: tuple) -> dict[str, Any]:
    op, left, right = ask
    other = rng.choice([c for c in COLOURS if c not in (left, right)])
    high = 9 if op == "times" else 20
    colours = [left, right, other]
    rng.shuffle(colours)
    numbers = []
    for band, colour in enumerate(colours):
        x, y = rng.randint(10, IMAGE_SIZE - 60), band * (IMAGE_SIZE // 3) + rng.randint(4, 14)
        numbers.append({"value": rng.randint(2, high), "colour": colour, "xy": [x, y]})
    value = {n["colour"]: n["value"] for n in numbers}
    a, b = value[left], value[right]
    result = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    words = {"plus": "plus", "minus": "minus", "times": "multiplied by"}[op]
    return {
        "question": f"What is the {left} number {words} the {right} number?",
        "answer": str(result),
        "scene": {"numbers": numbers, "ask": {"op": op, "left": left, "right": right}},
    }


_BUILDERS = {
    "counting": _counting,
    "chart_max": _chart_max,
    "chart_value": _chart_value,
    "size_compare": _size_compare,
    "arithmetic": _arithmetic,
}
