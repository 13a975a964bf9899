"""From a request's text (or ids) and image to the token ids the model reads.

An image reaches the engine as a file path, base64 data or a ``data:`` URI; the
text carries one image marker where it goes. SGLang's frontend writes its chat
template's marker (``<image>`` for chatml, ``<|vision_start|><|image_pad|>
<|vision_end|>`` for qwen2-vl, ...); it is mapped to the model's own placeholder
and the processor expands that into the image's tokens. In the cache key those
tokens become one pseudo id derived from the image's bytes (SGLang's "pad
value"), above the vocabulary, so two images never share cached KV.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ted_sglang.engine.protocol import RequestError

if TYPE_CHECKING:
    import torch

    from ted_sglang.engine.model_loader import LoadedModel

# Image markers of SGLang's frontend chat templates (sglang/lang/chat_template.py),
# longest first so that a marker containing another one wins.
FRONTEND_IMAGE_TOKENS = (
    "<|vision_start|><|image_pad|><|vision_end|>",
    "(<image>./</image>)",
    "<image_placeholder>",
    "<start_of_image>",
    "<|image|>",
    "<image>",
    "[IMG]",
)


@dataclass
class ImageInput:
    """An image's processed pixels and where its tokens sit in the prompt (``[start, end)``)."""

    pixel_values: torch.Tensor
    start: int
    end: int
    pad_id: int


@dataclass
class Prompt:
    input_ids: list[int]
    cache_key: list[int]
    image: ImageInput | None


class PromptBuilder:
    """Tokenizes prompts and prepares images for one loaded model."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.tokenizer = loaded.tokenizer
        self.processor = loaded.processor
        self.is_vision = loaded.is_vision
        self.image_token = loaded.image_token
        self.vocab_size = loaded.vocab_size
        self.image_token_id: int | None = None
        if self.is_vision and self.image_token is not None:
            self.image_token_id = int(self.tokenizer.convert_tokens_to_ids(self.image_token))

    def build(self, text: str | None, input_ids: list[int] | None, image: str | None) -> Prompt:
        if image is not None:
            if not self.is_vision:
                raise RequestError("this model does not take images (image_data was given)")
            if text is None:
                raise RequestError("image_data needs a text prompt, not input_ids")
            return self._with_image(text, image)
        if text is not None:
            ids = list(self.tokenizer.encode(text))
            if not ids:
                raise RequestError("the prompt is empty after tokenization")
        else:
            assert input_ids is not None
            ids = input_ids
            bad = [i for i in ids if i >= self.vocab_size]
            if bad:
                raise RequestError(
                    f"input_ids holds ids outside the vocabulary of {self.vocab_size}: {bad[:5]}"
                )
        if self.image_token_id is not None and self.image_token_id in ids:
            raise RequestError(
                f"the prompt holds the image token {self.image_token!r} but no image_data"
            )
        return Prompt(ids, list(ids), None)

    def _with_image(self, text: str, image_data: str) -> Prompt:
        assert self.image_token is not None and self.image_token_id is not None
        raw = load_image_bytes(image_data)
        text = map_image_token(text, self.image_token)
        image = decode_image(raw)
        try:
            enc = self.processor(text=text, images=image, return_tensors="pt")
        except (ValueError, RuntimeError) as exc:
            raise RequestError(f"could not process the image: {exc}") from None
        ids = enc["input_ids"][0].tolist()
        positions = [i for i, t in enumerate(ids) if t == self.image_token_id]
        start, end = positions[0], positions[-1] + 1
        if len(positions) != end - start:
            raise RequestError("the prompt must hold exactly one image marker")
        digest = hashlib.sha256(raw).digest()
        pad_id = self.vocab_size + int.from_bytes(digest[:4], "little") % (1 << 30)
        key = ids[:start] + [pad_id] * (end - start) + ids[end:]
        return Prompt(ids, key, ImageInput(enc["pixel_values"], start, end, pad_id))


def map_image_token(text: str, image_token: str) -> str:
    """Replace the one image marker in ``text`` with the model's ``image_token``."""
    found = [(text.find(m), m) for m in (image_token, *FRONTEND_IMAGE_TOKENS) if m in text]
    if not found:
        raise RequestError(
            f"image_data was given but the prompt has no image marker (such as {image_token!r})"
        )
    pos, marker = min(found, key=lambda f: (f[0], -len(f[1])))
    rest = text[pos + len(marker) :]
    if any(m in rest for m in (image_token, *FRONTEND_IMAGE_TOKENS)):
        raise RequestError("at most one image per request is supported (found several markers)")
    return text[:pos] + image_token + rest


def load_image_bytes(image_data: str) -> bytes:
    """Bytes of an image given as a ``data:`` URI, a file path or base64 (no URLs)."""
    if image_data.startswith(("http://", "https://")):
        raise RequestError("image URLs are not fetched; send the image as base64 or a file path")
    if image_data.startswith("data:"):
        _, _, payload = image_data.partition(",")
        return _b64(payload)
    if len(image_data) < 4096 and os.path.isfile(image_data):
        with open(image_data, "rb") as f:
            return f.read()
    return _b64(image_data)


def decode_image(raw: bytes) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(raw))
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RequestError(f"image_data is not a readable image: {exc}") from None


def _b64(payload: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(
            "image_data is neither an existing file, a data URI nor valid base64"
        ) from None
