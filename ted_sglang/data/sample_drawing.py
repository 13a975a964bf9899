"""Drawing the sample set's scenes with PIL (imported here, not by the data package)."""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ted_sglang.data.sample_set import CHART_SIZE, COLOURS, IMAGE_SIZE

BAR_COLOUR = (70, 110, 190)
GRID_COLOUR = (215, 215, 215)
INK = (20, 20, 20)
# Chart geometry: the axis runs from value 0 at CHART_BOTTOM up to the maximum at CHART_TOP.
CHART_LEFT, CHART_RIGHT, CHART_TOP, CHART_BOTTOM = 36, CHART_SIZE - 8, 40, 196
BAR_WIDTH = 28


def render(category: str, scene: dict[str, Any]) -> Image.Image:
    """The image of a sample-set scene."""
    if category in ("counting", "size_compare"):
        return _shapes(scene["shapes"])
    if category in ("chart_max", "chart_value"):
        return _chart(scene)
    assert category == "arithmetic", category
    return _numbers(scene["numbers"])


def bar_geometry(index: int, count: int, value: float, maximum: float) -> tuple[int, ...]:
    """The box ``(x0, y0, x1, y1)`` of bar ``index`` of ``count`` with ``value``."""
    slot = (CHART_RIGHT - CHART_LEFT) / count
    x0 = round(CHART_LEFT + slot * index + (slot - BAR_WIDTH) / 2)
    y0 = round(CHART_BOTTOM - (CHART_BOTTOM - CHART_TOP) * value / maximum)
    return x0, y0, x0 + BAR_WIDTH, CHART_BOTTOM


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _shapes(shapes: list[dict[str, Any]]) -> Image.Image:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
    draw = ImageDraw.Draw(image)
    for item in shapes:
        x0, y0, x1, y1 = item["box"]
        colour = COLOURS[item["colour"]]
        if item["shape"] == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif item["shape"] == "square":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
    return image


def _chart(scene: dict[str, Any]) -> Image.Image:
    image = Image.new("RGB", (CHART_SIZE, CHART_SIZE), "white")
    draw = ImageDraw.Draw(image)
    small = _font(11)
    maximum = scene["max"]
    for tick in range(0, maximum + 1, 2):
        y = bar_geometry(0, 1, tick, maximum)[1]
        draw.line((CHART_LEFT, y, CHART_RIGHT, y), fill=GRID_COLOUR)
        draw.text((CHART_LEFT - 6, y), str(tick), fill=INK, font=small, anchor="rm")
    draw.line((CHART_LEFT, CHART_TOP - 4, CHART_LEFT, CHART_BOTTOM), fill=INK)
    draw.line((CHART_LEFT, CHART_BOTTOM, CHART_RIGHT, CHART_BOTTOM), fill=INK)
    bars = scene["bars"]
    for index, bar in enumerate(bars):
        x0, y0, x1, y1 = bar_geometry(index, len(bars), bar["value"], maximum)
        draw.rectangle((x0, y0, x1, y1 - 1), fill=BAR_COLOUR)
        draw.text(
            ((x0 + x1) / 2, CHART_BOTTOM + 4), bar["label"], fill=INK, font=small, anchor="mt"
        )
    title = scene["title"][0].upper() + scene["title"][1:]
    draw.text((CHART_SIZE / 2, 8), title, fill=INK, font=_font(14), anchor="mt")
    return image


def _numbers(numbers: list[dict[str, Any]]) -> Image.Image:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
    draw = ImageDraw.Draw(image)
    font = _font(40)
    for item in numbers:
        draw.text(tuple(item["xy"]), str(item["value"]), fill=COLOURS[item["colour"]], font=font)
    return image
