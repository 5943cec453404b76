"""A loopback server that speaks the OpenAI chat-completions protocol and answers from fixtures.

It is what the tests, `robolearn bench vlm` and the README's walk-throughs talk to in place of vLLM,
Ollama or llama.cpp's server: a real HTTP server on 127.0.0.1 (threads, one per connection) that the
real client reaches over a real socket, so everything between a prompt and a parsed answer runs as
it would against a deployed model. What it answers comes from a *responder*: a function of the
request body returning a `Reply` (or a string), so a test scripts exactly the answers it needs:
slow ones, malformed ones, cut-off bodies, 429s and 5xx errors.

    with FixtureServer(lambda req: '{"stage": "grasp"}') as server:
        client = VLMClient(VLMConfig(base_url=server.base_url, model=server.model))

It mimics what the real servers do at their edges: `GET /v1/models`; 404 for an unknown model; 401
for a wrong key when started with `api_key`; 400 "not a multimodal model" for image input when
started with `vision=False` (vLLM's answer for a text-only model); `Retry-After` on 429.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from robolearn.errors import ConfigError


@dataclass
class Reply:
    """One scripted answer to a chat-completions request."""

    content: str = ""
    """the assistant message text"""
    status: int = 200
    """HTTP status; an error status sends `{"error": {"message": content}}`"""
    delay_s: float = 0.0
    """seconds to wait before answering (on top of the server's latency)"""
    finish_reason: str = "stop"
    """"length" marks an answer cut off at max_tokens, as servers do"""
    body: bytes | None = None
    """raw response body instead of a well-formed one (a malformed answer)"""
    truncate: bool = False
    """announce the full body's length but close the connection halfway through it"""
    headers: dict[str, str] = field(default_factory=dict)
    """extra response headers (e.g. Retry-After on a 429)"""


Responder = Callable[[dict[str, Any]], "Reply | str"]


def request_text(request: dict[str, Any]) -> str:
    """All text parts of a request's messages, joined (what a responder usually matches on)."""
    out = []
    for m in request.get("messages", []):
        content = m.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return "\n".join(out)


def request_images(request: dict[str, Any]) -> list[str]:
    """The image URLs (data URLs when sent inline) of a request, in order."""
    return [p["image_url"]["url"] for m in request.get("messages", []) if isinstance(m.get("content"), list)
            for p in m["content"] if isinstance(p, dict) and p.get("type") == "image_url"]


def script(replies: Iterable[Reply | str]) -> Responder:
    """A responder giving `replies` in order, one per request (thread-safe); raises when they run out."""
    queue, lock = list(replies), threading.Lock()

    def respond(request: dict[str, Any]) -> Reply | str:
        with lock:
            if not queue:
                return Reply("fixture server: no scripted reply left for this request", status=500)
            return queue.pop(0)
    return respond


def fixture_file_responder(path: str | Path) -> Responder:
    """A responder from a JSON file of rules, first match wins:

        {"rules": [{"match": "<regex over the request's text>", "reply": "<answer>"}, ...],
         "default": "<answer when no rule matches>"}

    A reply may be an object with Reply's fields instead of a string (e.g. {"status": 429})."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such fixtures file") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("rules", []), list):
        raise ConfigError(f'{path}: expected {{"rules": [{{"match": REGEX, "reply": TEXT}}, ...], "default": TEXT}}')
    rules = []
    for i, rule in enumerate(raw.get("rules", [])):
        try:
            rules.append((re.compile(rule["match"], re.S), _reply(rule["reply"])))
        except (KeyError, TypeError, re.error) as e:
            raise ConfigError(f"{path}: rule {i} needs a valid 'match' regex and a 'reply' ({e})") from None
    default = _reply(raw.get("default", {"content": "no fixture matches this request", "status": 404}))

    def respond(request: dict[str, Any]) -> Reply:
        text = request_text(request)
        return next((reply for rx, reply in rules if rx.search(text)), default)
    return respond


def _reply(raw: Any) -> Reply:
    return Reply(raw) if isinstance(raw, str) else Reply(**raw)


class FixtureServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1 (see the module docstring)."""

    def __init__(self, responder: Responder | str, *, model: str = "fixture-vlm", port: int = 0,
                 latency_s: float = 0.0, api_key: str | None = None, vision: bool = True):
        self.responder: Responder = (lambda request: responder) if isinstance(responder, str) else responder
        self.model, self.latency_s, self.api_key, self.vision = model, latency_s, api_key, vision
        self.requests: list[dict[str, Any]] = []
        """every chat request body received, in arrival order"""
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # headers and body go out in two writes; without this, Nagle's algorithm and the peer's
                # delayed ACK add ~40 ms to every answer on a kept-alive connection (uvicorn sets it too)
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args) -> None:  # quiet: tests and benchmarks read results, not logs
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    return self._json(400, {"error": {"message": "request body is not JSON"}})
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    return self._json(401, {"error": {"message": "Incorrect API key provided",
                                                      "type": "invalid_request_error", "code": "invalid_api_key"}})
                if body.get("model") != server.model:
                    return self._json(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                                      "type": "NotFoundError", "code": 404}})
                if not server.vision and request_images(body):
                    return self._json(400, {"error": {"message": f"{server.model} is not a multimodal model",
                                                      "type": "BadRequestError", "code": 400}})
                with server._lock:
                    server.requests.append(body)
                reply = server.responder(body)
                reply = Reply(reply) if isinstance(reply, str) else reply
                time.sleep(server.latency_s + reply.delay_s)
                if reply.body is not None:
                    return self._raw(reply.status, reply.body, reply.headers, reply.truncate)
                if reply.status != 200:
                    return self._json(reply.status, {"error": {"message": reply.content, "code": reply.status}},
                                      reply.headers)
                self._json(200, completion(server.model, reply.content, reply.finish_reason), reply.headers,
                           reply.truncate)

            def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None,
                      truncate: bool = False) -> None:
                self._raw(status, json.dumps(obj).encode(), headers or {}, truncate)

            def _raw(self, status: int, data: bytes, headers: dict[str, str], truncate: bool) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                if truncate:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if truncate else data)
                if truncate:
                    self.close_connection = True

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FixtureServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fixture-vlm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FixtureServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def completion(model: str, content: str, finish_reason: str = "stop") -> dict[str, Any]:
    """A chat.completion response body with one choice."""
    n = max(1, len(content) // 4)
    return {"id": f"chatcmpl-{time.monotonic_ns()}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "finish_reason": finish_reason,
                                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 0, "completion_tokens": n, "total_tokens": n}}


@dataclass
class ServeConfig:
    """What `robolearn vlm serve` answers with."""

    fixtures: str = ""
    """JSON rules file ({"rules": [{"match": REGEX, "reply": TEXT}], "default": TEXT}); see fixture_file_responder"""
    port: int = 8000
    """port on 127.0.0.1"""
    model: str = "fixture-vlm"
    """model name it serves"""
    latency_s: float = 0.0
    """seconds added to every answer (to rehearse a slow endpoint)"""


def serve(cfg: ServeConfig) -> None:
    """Serve fixture answers on 127.0.0.1 until interrupted: a stand-in endpoint for trying a pipeline
    without a model (answers come from the rules file, not from any model)."""
    if not cfg.fixtures:
        raise ConfigError("vlm serve: pass the rules file with --fixtures FILE")
    server = FixtureServer(fixture_file_responder(cfg.fixtures), model=cfg.model, port=cfg.port,
                           latency_s=cfg.latency_s)
    print(f"serving {cfg.fixtures} as model {cfg.model!r} at {server.base_url} (Ctrl-C stops)", flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()
