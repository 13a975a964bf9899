"""An ``image_url`` content part with a data URI reaches a vision-language model."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import openai
import pytest
from bank_files import write_bank
from serve_threads import serve_thread


def png_data_uri(color: tuple[int, int, int]) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_image_part_is_sent_as_image_data(vision_engine_url: str, tmp_path: Path) -> None:
    write_bank(tmp_path / "bank.json", "Name the shapes you see, then count.", model="tiny-vision")
    with serve_thread(tmp_path / "bank.json", vision_engine_url, echo_prompt=True) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
        text_only = client.chat.completions.create(
            model="tiny", max_tokens=2, messages=[{"role": "user", "content": "What is it?"}]
        )
        parts = [
            {"type": "image_url", "image_url": {"url": png_data_uri((200, 30, 30))}},
            {"type": "text", "text": "What is it?"},
        ]
        with_image = client.chat.completions.create(
            model="tiny", max_tokens=2, messages=[{"role": "user", "content": parts}]
        )
        prompt = with_image.model_extra["ted"]["prompt"]
        assert "<image>What is it?" in prompt
        # the image's 16 tokens replace its one marker token
        extra = with_image.usage.prompt_tokens - text_only.usage.prompt_tokens
        assert extra >= 15
        with pytest.raises(openai.BadRequestError, match="data: URI"):
            client.chat.completions.create(
                model="tiny", max_tokens=2,
                messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
                ]}],
            )  # fmt: skip
