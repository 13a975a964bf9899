"""Where programs run: the choice of server, the chat template, launching and stopping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ted_sglang.runtime import (
    DEFAULT_MODEL,
    connect,
    normalize_url,
    open_runtime,
    pick_chat_template,
    plan_placement,
    takes_images,
)


@pytest.mark.parametrize(
    ("student", "teacher", "model", "cuda", "sglang", "expected"),
    [
        ("http://a:1", None, None, False, False, ("http://a:1", "http://a:1", None, None)),
        ("a:1/", "b:2", None, True, True, ("http://a:1", "http://b:2", None, None)),
        (None, None, None, False, False, (None, None, "engine", DEFAULT_MODEL)),
        (None, None, None, True, False, (None, None, "engine", DEFAULT_MODEL)),
        (None, None, "/m", False, True, (None, None, "engine", "/m")),
        (None, None, "qwen", True, True, (None, None, "sglang", "qwen")),
        (None, "http://t:3", None, True, True, (None, "http://t:3", "sglang", DEFAULT_MODEL)),
    ],
)
def test_plan_placement(student, teacher, model, cuda, sglang, expected) -> None:
    placement = plan_placement(student, teacher, model, has_cuda=cuda, has_sglang_server=sglang)
    got = (placement.student_url, placement.teacher_url, placement.launch, placement.model)
    assert got == expected


def test_model_with_a_url_is_refused() -> None:
    with pytest.raises(ValueError, match="--model picks the model of a launched server"):
        plan_placement("http://a:1", None, "m", has_cuda=False, has_sglang_server=False)


def test_normalize_url() -> None:
    assert normalize_url("localhost:30000/") == "http://localhost:30000"
    assert normalize_url("https://x.org/api/") == "https://x.org/api"
    for bad in ("", "ftp://x"):
        with pytest.raises(ValueError):
            normalize_url(bad)


def test_chat_template_choice() -> None:
    engine_info = {"model_path": "/models/whatever", "chat_template_name": "chatml"}
    assert pick_chat_template(engine_info) == "chatml"
    assert pick_chat_template(engine_info, "qwen2-vl") == "qwen2-vl"
    # A real SGLang server names no template: SGLang's own matching on the path decides.
    assert pick_chat_template({"model_path": "Qwen/Qwen2.5-7B-Instruct"}) == "qwen"
    assert pick_chat_template({"model_path": "Qwen/Qwen2-VL-7B-Instruct"}) == "qwen2-vl"
    assert pick_chat_template({"model_path": "/nothing/known"}) == "default"
    with pytest.raises(ValueError, match="unknown chat template 'nope'"):
        pick_chat_template(engine_info, "nope")


def test_chat_template_from_a_local_model_directory(tmp_path: Path) -> None:
    """A real SGLang server serving a local ChatML model whose path SGLang's regexes miss."""
    model = tmp_path / "SmolLM2-135M-Instruct"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / "chat_template.jinja").write_text("{% for m in messages %}<|im_start|>{% endfor %}")
    assert pick_chat_template({"model_path": str(model)}) == "chatml"
    (model / "chat_template.jinja").unlink()
    (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": "plain {{ x }}"}))
    assert pick_chat_template({"model_path": str(model)}) == "default"


def test_takes_images_reads_sglang_field() -> None:
    assert takes_images({"has_image_understanding": True})
    assert not takes_images({"has_image_understanding": False})
    assert not takes_images({})


def test_connect_to_the_engine(engine_url: str, vision_engine_url: str) -> None:
    text = connect(engine_url)
    assert text.chat_template == "chatml" and not text.takes_images
    assert text.backend.get_chat_template().name == "chatml"
    vision = connect(vision_engine_url)
    assert vision.takes_images
    with pytest.raises(ValueError, match="cannot reach"):
        connect("http://127.0.0.1:9")


def test_open_runtime_launches_the_engine_and_stops_it(tiny_model_dir: Path, tmp_path) -> None:
    with open_runtime(model=str(tiny_model_dir), log_dir=tmp_path) as rt:
        assert rt.placement.launch == "engine"
        assert rt.teacher is rt.student and rt.student.model_path == str(tiny_model_dir)
        (server,) = rt.servers
        assert server.is_running
        state_url = rt.student.url
    assert not server.is_running
    with pytest.raises(ValueError):
        connect(state_url)


def test_sigterm_stops_the_launched_engine(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A process holding a launched engine is sent SIGTERM: the engine goes with it."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from ted_sglang.runtime import open_runtime
        with open_runtime(model={str(tiny_model_dir)!r}) as rt:
            print(rt.servers[0].process.pid, flush=True)
            time.sleep(600)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        engine_pid = int(child.stdout.readline())
        os.kill(child.pid, signal.SIGTERM)
        assert child.wait(timeout=60) != 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(engine_pid):
            time.sleep(0.2)
        assert not _alive(engine_pid)
    finally:
        if child.poll() is None:
            child.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
