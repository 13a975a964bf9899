"""32 concurrent clients for 20 s, good and malformed requests mixed: no errors, no stall."""

from __future__ import annotations

import json
import random
import threading
import time

import httpx
import pytest

NUM_CLIENTS = 32
DURATION_S = 20.0

MALFORMED = [
    b"{broken",
    json.dumps({"sampling_params": {}}).encode(),
    json.dumps({"text": "a", "sampling_params": {"max_new_tokens": -3}}).encode(),
    json.dumps({"text": "a", "sampling_params": {"top_p": 7}}).encode(),
    json.dumps({"text": ["a", "b"], "sampling_params": [{}]}).encode(),
    json.dumps({"text": "a", "sampling_params": {"regex": "[unclosed"}}).encode(),
    json.dumps({"text": "a", "image_data": "/no/such/file.png"}).encode(),
    json.dumps({"input_ids": [1, 2, 10**9]}).encode(),
    json.dumps({"text": None, "input_ids": None}).encode(),
    json.dumps({"text": "a", "sampling_params": {"n": "many"}}).encode(),
]


def good_request(rng: random.Random) -> dict:
    words = ["alpha", "beta", "gamma", "delta", "the", "answer", "is", "step"]
    text = "Shared system prompt for every client. " * 3 + " ".join(
        rng.choice(words) for _ in range(rng.randint(1, 40))
    )
    sampling = {"max_new_tokens": rng.randint(0, 24), "temperature": rng.choice([0, 0.7, 1.0])}
    body: dict = {"text": text, "sampling_params": sampling}
    kind = rng.random()
    if kind < 0.1:
        sampling["regex"] = "[0-9]{1,4}"
    elif kind < 0.2:
        body.update(return_logprob=True, top_logprobs_num=2, logprob_start_len=0)
    elif kind < 0.3:
        body["text"] = [text, text[:20]]
    elif kind < 0.35:
        sampling["n"] = 2
    elif kind < 0.5:
        body["stream"] = True
    return body


@pytest.mark.slow
def test_32_clients_for_20_seconds(engine_url: str) -> None:
    errors: list[str] = []
    counts = {"ok": 0, "rejected": 0, "streamed": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + DURATION_S

    def client(index: int) -> None:
        rng = random.Random(index)
        with httpx.Client(base_url=engine_url, timeout=120) as http:
            while time.monotonic() < deadline:
                try:
                    if rng.random() < 0.15:
                        response = http.post(
                            "/generate",
                            content=rng.choice(MALFORMED),
                            headers={"content-type": "application/json"},
                        )
                        if response.status_code != 400 or "error" not in response.json():
                            errors.append(f"malformed: {response.status_code} {response.text}")
                        else:
                            with lock:
                                counts["rejected"] += 1
                        continue
                    body = good_request(rng)
                    if body.get("stream"):
                        with http.stream("POST", "/generate", json=body) as response:
                            lines = [x for x in response.iter_lines() if x]
                        if response.status_code != 200 or lines[-1] != "data: [DONE]":
                            errors.append(f"stream: {response.status_code} {lines[-3:]}")
                            continue
                        if any("error" in json.loads(x[6:]) for x in lines[:-1]):
                            errors.append(f"stream error chunk: {lines[-2]}")
                            continue
                        with lock:
                            counts["streamed"] += 1
                        continue
                    response = http.post("/generate", json=body)
                    if response.status_code != 200:
                        errors.append(f"generate: {response.status_code} {response.text[:300]}")
                        continue
                    outs = response.json()
                    for out in outs if isinstance(outs, list) else [outs]:
                        assert out["meta_info"]["finish_reason"]["type"] in ("length", "stop")
                    with lock:
                        counts["ok"] += 1
                except Exception as exc:  # anything unexpected is an error of the test run
                    errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(NUM_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DURATION_S + 180)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert not errors, errors[:5]
    print(f"{NUM_CLIENTS} clients, {DURATION_S:.0f} s: {counts}")
    assert counts["ok"] > NUM_CLIENTS and counts["rejected"] > 0 and counts["streamed"] > 0
    info = httpx.get(engine_url + "/server_info", timeout=30).json()
    assert info["internal_states"][0]["num_failed_steps"] == 0
    assert info["internal_states"][0]["num_running_reqs"] == 0
    after = httpx.post(engine_url + "/generate", json={"text": "still alive?"}, timeout=60)
    assert after.status_code == 200
