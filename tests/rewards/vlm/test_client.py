"""The OpenAI-compatible client against a real loopback server: retries, schemas, cache, errors."""

from __future__ import annotations

import base64
import json
import threading
import time

import cv2
import numpy as np
import pytest

from robolearn.rewards.vlm.client import (
    ResponseCache,
    VLMAnswerError,
    VLMClient,
    VLMConfig,
    VLMError,
    connect,
    extract_json,
)
from robolearn.rewards.vlm.server import FixtureServer, Reply, fixture_file_responder, request_images, script

SCHEMA = {"type": "object", "properties": {"stage": {"enum": ["reach", "grasp"]}}, "required": ["stage"]}


def config(server: FixtureServer, **kw) -> VLMConfig:
    return VLMConfig(base_url=server.base_url, model=server.model, backoff_s=0.01,
                     **{"cache_dir": None, "timeout_s": 5.0, **kw})


def test_images_go_inline_and_decode_to_the_same_pixels():
    img = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    with FixtureServer('{"stage": "reach"}') as s:
        out = VLMClient(config(s)).ask_json("which stage?", [img, img[::-1]], schema=SCHEMA)
        req = s.requests[0]
    assert out == {"stage": "reach"}
    urls = request_images(req)
    assert len(urls) == 2 and urls[0].startswith("data:image/png;base64,")
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(urls[0].split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(decoded[..., ::-1], img)  # RGB in, RGB out (PNG is lossless)
    assert req["response_format"] == {"type": "json_object"} and req["temperature"] == 0.0


def test_malformed_answer_is_reasked_once_with_the_error_quoted():
    with FixtureServer(script(["I think it is grasping", 'Sure! ```json\n{"stage": "grasp"}\n```'])) as s:
        c = VLMClient(config(s))
        assert c.ask_json("stage?", schema=SCHEMA) == {"stage": "grasp"}
        assert c.stats.reasks == 1
        follow_up = s.requests[1]["messages"]
    assert follow_up[-2] == {"role": "assistant", "content": "I think it is grasping"}
    assert "not JSON" in follow_up[-1]["content"]


def test_schema_violation_and_semantic_check_are_reasked():
    def check(v):
        if v["stage"] != "grasp":
            raise ValueError("the gripper is closed, so the stage cannot be reach")
    with FixtureServer(script(['{"stage": "lift"}', '{"stage": "reach"}', '{"stage": "grasp"}'])) as s:
        c = VLMClient(config(s))
        with pytest.raises(VLMAnswerError, match="unusable answer twice"):
            c.ask_json("stage?", schema=SCHEMA, check=check)
        assert "is not one of" in s.requests[1]["messages"][-1]["content"]
        assert c.ask_json("stage again?", schema=SCHEMA, check=check) == {"stage": "grasp"}


def test_truncated_answer_counts_as_malformed():
    with FixtureServer(script([Reply('{"stage": "rea', finish_reason="length"), '{"stage": "reach"}'])) as s:
        c = VLMClient(config(s))
        assert c.ask_json("stage?", schema=SCHEMA) == {"stage": "reach"}
        assert "cut off" in s.requests[1]["messages"][-1]["content"]


def test_retries_on_429_5xx_and_cut_connections_then_succeeds():
    replies = [Reply("slow down", status=429, headers={"Retry-After": "0.05"}), Reply("oops", status=500),
               Reply("unavailable", status=503), Reply('{"stage": "reach"}', truncate=True),
               Reply(body=b'{"choices": [', status=200), '{"stage": "reach"}']
    with FixtureServer(script(replies)) as s:
        c = VLMClient(config(s, max_retries=6))
        t = time.perf_counter()
        assert c.ask_json("stage?", schema=SCHEMA) == {"stage": "reach"}
        assert time.perf_counter() - t >= 0.05  # Retry-After honoured
    assert c.stats.retries == 5


def test_persistent_server_errors_give_one_message():
    with FixtureServer(lambda r: Reply("overloaded", status=503)) as s:
        with pytest.raises(VLMError, match=r"kept failing \(503: overloaded\) after 3 tries"):
            VLMClient(config(s, max_retries=2)).ask("x")


def test_slow_answer_times_out_with_a_clear_message():
    with FixtureServer(lambda r: Reply('{"stage": "reach"}', delay_s=1.0)) as s:
        with pytest.raises(VLMError, match=r"did not answer within vlm.timeout_s=0.2 s, 2 times"):
            VLMClient(config(s, timeout_s=0.2, max_retries=1)).ask("x")


def test_unreachable_endpoint_bad_key_unknown_model_and_text_only_model():
    with FixtureServer("x") as s:
        port = s.port
    with pytest.raises(VLMError, match=r"cannot reach the VLM endpoint .* start the server"):
        VLMClient(VLMConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", cache_dir=None, max_retries=1,
                            backoff_s=0.01)).ask("x")
    with FixtureServer("x", api_key="right") as s, pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBOLEARN_TEST_KEY", "wrong")
        with pytest.raises(VLMError, match=r"refused the API key \(401\); set \$ROBOLEARN_TEST_KEY"):
            VLMClient(config(s, api_key_env="ROBOLEARN_TEST_KEY")).ask("x")
        mp.setenv("ROBOLEARN_TEST_KEY", "right")
        assert VLMClient(config(s, api_key_env="ROBOLEARN_TEST_KEY")).ask("x") == "x"
    with FixtureServer("x", model="served") as s:
        with pytest.raises(VLMError, match=r"has no model 'other'; it serves served"):
            connect(VLMConfig(base_url=s.base_url, model="other", cache_dir=None))
        with pytest.raises(VLMError, match=r"has no model 'other' \(404"):
            VLMClient(VLMConfig(base_url=s.base_url, model="other", cache_dir=None)).ask("x")
    with FixtureServer("x", vision=False) as s:
        with pytest.raises(VLMError, match="does not take images"):
            VLMClient(config(s)).ask("x", [np.zeros((4, 4, 3), np.uint8)])


def test_key_never_reaches_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBOLEARN_TEST_KEY", "sk-very-secret-123")
    with FixtureServer('{"stage": "reach"}', api_key="sk-very-secret-123") as s:
        VLMClient(config(s, api_key_env="ROBOLEARN_TEST_KEY", cache_dir=str(tmp_path))).ask_json("q", schema=SCHEMA)
    files = list(tmp_path.rglob("*.json"))
    assert files and all("sk-very-secret" not in f.read_text() for f in files)


def test_cache_makes_a_rerun_free_and_is_keyed_by_content(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    with FixtureServer('{"stage": "reach"}') as s:
        c = VLMClient(config(s, cache_dir=str(tmp_path)))
        c.ask_json("q", [img], schema=SCHEMA)
        # a new client (a rerun of the pipeline) reads the disk cache
        c2 = VLMClient(config(s, cache_dir=str(tmp_path)))
        assert c2.ask_json("q", [img], schema=SCHEMA) == {"stage": "reach"}
        assert len(s.requests) == 1 and c2.stats.cache_hits == 1
        img2 = img.copy()
        img2[0, 0, 0] = 1  # one pixel differs: a different request
        c2.ask_json("q", [img2], schema=SCHEMA)
        c2.ask_json("q2", [img], schema=SCHEMA)
        assert len(s.requests) == 3


def test_invalid_answers_are_not_cached(tmp_path):
    with FixtureServer(script(["junk", "junk", '{"stage": "reach"}'])) as s:
        c = VLMClient(config(s, cache_dir=str(tmp_path)))
        with pytest.raises(VLMAnswerError):
            c.ask_json("q", schema=SCHEMA)
        assert c.ask_json("q", schema=SCHEMA) == {"stage": "reach"}


def test_damaged_cache_entry_is_asked_again(tmp_path):
    with FixtureServer('{"stage": "reach"}') as s:
        VLMClient(config(s, cache_dir=str(tmp_path))).ask_json("q", schema=SCHEMA)
        for f in tmp_path.rglob("*.json"):
            f.write_text("{trunc")
        assert VLMClient(config(s, cache_dir=str(tmp_path))).ask_json("q", schema=SCHEMA) == {"stage": "reach"}
        assert len(s.requests) == 2


def test_map_bounds_concurrency_and_keeps_order():
    live, peak, lock = [0], [0], threading.Lock()

    def respond(req):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.05)
        with lock:
            live[0] -= 1
        return json.dumps({"echo": req["messages"][-1]["content"].split("\n")[0]})

    schema = {"type": "object", "required": ["echo"]}
    with FixtureServer(respond) as s:
        c = VLMClient(config(s, concurrency=3))
        out = c.map(lambda i: c.ask_json(f"item {i}", schema=schema)["echo"], range(12))
    assert out == [f"item {i}" for i in range(12)]
    assert peak[0] == 3


def test_fixture_file_rules(tmp_path):
    f = tmp_path / "fixtures.json"
    f.write_text(json.dumps({"rules": [{"match": "stage", "reply": '{"stage": "grasp"}'},
                                       {"match": "busy", "reply": {"content": "no", "status": 400}}],
                             "default": "plain"}))
    with FixtureServer(fixture_file_responder(f)) as s:
        c = VLMClient(config(s))
        assert c.ask_json("which stage?", schema=SCHEMA) == {"stage": "grasp"}
        assert c.ask("hello") == "plain"
        with pytest.raises(VLMError, match="rejected the request"):
            c.ask("busy?")


def test_extract_json_and_memory_only_cache():
    assert extract_json('Here: {"a": [1, 2]} done') == {"a": [1, 2]}
    assert extract_json("```json\n[1, 2]\n```") == [1, 2]
    with pytest.raises(ValueError, match="not JSON"):
        extract_json("no json here")
    cache = ResponseCache(None, memory_items=2)
    for k in "abc":
        cache.put(k, k, {})
    assert cache.get("a") is None and cache.get("c") == "c"


def test_bad_config_is_refused():
    from robolearn.errors import ConfigError

    with pytest.raises(ConfigError, match="must be an http"):
        VLMClient(VLMConfig(base_url="localhost:8000"))
    with pytest.raises(ConfigError, match="concurrency=0"):
        VLMClient(VLMConfig(concurrency=0))
