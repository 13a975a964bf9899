"""From a request's text (or ids) and image to the token ids the model reads.

An image reaches the engine as base64 data or a ``data:`` URI, or as a file path
inside the one folder the operator allowed (``--allow-local-images``; no other path
is read, no URL fetched, and every refusal reads the same, so that answers tell
nothing about which files exist); the text carries one image marker where it goes.
SGLang's frontend writes its chat template's marker (``<image>`` for chatml,
``<|vision_start|><|image_pad|><|vision_end|>`` for qwen2-vl, ...); it is mapped to
the model's own placeholder and the processor expands that into the image's tokens.
In the cache key those tokens become one pseudo id derived from the image's bytes
(SGLang's "pad value"), above the vocabulary, so two images never share cached KV.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ted_sglang.engine.errors import RequestError
from ted_sglang.engine.limits import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, max_prompt_chars

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

    def truncated(self, num_tokens: int) -> Prompt:
        """The first ``num_tokens`` tokens (SGLang's ``--allow-auto-truncate`` keeps the head)."""
        if self.image is not None and self.image.end > num_tokens:
            raise RequestError(
                f"The input ({len(self.input_ids)} tokens) is longer than the model's context "
                f"and cutting it to {num_tokens} tokens would cut its image."
            )
        return Prompt(self.input_ids[:num_tokens], self.cache_key[:num_tokens], self.image)


class PromptBuilder:
    """Tokenizes prompts and prepares images for one loaded model."""

    def __init__(self, loaded: LoadedModel, local_image_dir: str | None = None) -> None:
        """``local_image_dir``: the folder whose files ``image_data`` may name (None: none)."""
        self.tokenizer = loaded.tokenizer
        self.local_image_dir = local_image_dir
        self.max_text_chars = max_prompt_chars(loaded.tokenizer.get_vocab(), loaded.context_length)
        self.processor = loaded.processor
        self.is_vision = loaded.is_vision
        self.image_token = loaded.image_token
        self.vocab_size = loaded.vocab_size
        self.image_token_id: int | None = None
        if self.is_vision and self.image_token is not None:
            self.image_token_id = int(self.tokenizer.convert_tokens_to_ids(self.image_token))

    def build(self, text: str | None, input_ids: list[int] | None, image: str | None) -> Prompt:
        if text is not None:
            check_text(text, self.max_text_chars)
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
        raw = load_image_bytes(image_data, self.local_image_dir)
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


def check_text(text: str, max_chars: int) -> None:
    """Refuse, before tokenizing, a text that cannot fit the context or cannot be encoded."""
    if len(text) > max_chars:
        raise RequestError(
            f"The input text ({len(text)} characters) cannot fit the model's context: "
            f"at most {max_chars} characters are read."
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(
            f"The input text holds a lone surrogate (position {exc.start}); send valid Unicode."
        ) from None


# The one answer for every image_data that is neither base64 nor an allowed file.
IMAGE_REFUSED = (
    "image_data must be base64 data or a data: URI (file paths are read only inside the "
    "folder the engine was started with --allow-local-images; URLs are not fetched)"
)


def load_image_bytes(image_data: str, local_dir: str | None = None) -> bytes:
    """Bytes of an image given as a ``data:`` URI or base64, or as a path to a file inside
    ``local_dir`` (symlinks resolved first); anything else is refused with one message."""
    if image_data.startswith("data:"):
        _, _, payload = image_data.partition(",")
        return _b64(payload, "the data: URI does not hold valid base64")
    if local_dir is not None and "://" not in image_data[:16]:
        raw = _read_inside(local_dir, image_data)
        if raw is not None:
            return raw
    return _b64(image_data, IMAGE_REFUSED)


def _read_inside(folder: str, name: str) -> bytes | None:
    """The bytes of file ``name`` when it resolves to a regular file inside ``folder``."""
    import stat
    from pathlib import Path

    if len(name) > 4096 or "\0" in name:
        return None
    try:
        root = Path(folder).resolve(strict=True)
        path = (root / name).resolve(strict=True)
        if not path.is_relative_to(root):
            return None
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        fd = os.open(path, flags)  # non-blocking: a FIFO must not hang the request
    except (OSError, RuntimeError, ValueError):
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size > MAX_IMAGE_BYTES:
            raise RequestError(f"the image file is larger than {MAX_IMAGE_BYTES} bytes")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > MAX_IMAGE_BYTES:  # it grew since fstat
                raise RequestError(f"the image file is larger than {MAX_IMAGE_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def decode_image(raw: bytes) -> Any:
    from PIL import Image, UnidentifiedImageError

    if len(raw) > MAX_IMAGE_BYTES:
        raise RequestError(f"the image is larger than {MAX_IMAGE_BYTES} bytes")
    unreadable = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)
    try:
        image = Image.open(io.BytesIO(raw))  # reads the header only
    except unreadable as exc:
        raise RequestError(f"image_data is not a readable image: {exc}") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise RequestError(f"the image has {width}x{height} pixels, more than {MAX_IMAGE_PIXELS}")
    try:
        return image.convert("RGB")
    except unreadable as exc:
        raise RequestError(f"image_data is not a readable image: {exc}") from None


def _b64(payload: str, refusal: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(refusal) from None
