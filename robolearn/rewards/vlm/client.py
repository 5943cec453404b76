"""The OpenAI-compatible chat client every VLM path goes through.

Point it at vLLM (`vllm serve Qwen/Qwen2.5-VL-7B-Instruct`), Ollama (`http://127.0.0.1:11434/v1`),
llama.cpp's `llama-server` or a hosted API with `vlm.base_url` and `vlm.model`; the key is read from
the environment variable named by `vlm.api_key_env` and never written anywhere (not to logs, configs,
caches or reports). Images (numpy (H, W, 3) uint8) are sent inline as base64 data URLs.

    client = VLMClient(VLMConfig(base_url="http://127.0.0.1:11434/v1", model="qwen2.5vl:7b"))
    answer = client.ask_json("Which stage is this?", [frame], schema)      # validated dict
    answers = client.map(lambda f: client.ask_json(prompt, [f], schema), frames)  # 8 at a time

What it guarantees:
- retries with exponential backoff and jitter on 429, 5xx, timeouts and dropped connections
  (honouring Retry-After), up to `max_retries`; a wrong key, a missing model or a model that does not
  take images fails at once with one message saying which and the fix;
- JSON answers are parsed (fences and surrounding prose are tolerated) and validated against a JSON
  schema; a malformed, cut-off or invalid answer is re-asked once with the validation error quoted,
  then refused with a `VLMAnswerError`;
- an on-disk cache keyed by a hash of the request's content (model, messages with the images' pixel
  bytes, sampling settings, schema) so a rerun of a pipeline is reproducible and costs nothing; only
  answers that passed validation are cached.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from robolearn.data.format import atomic_write_bytes
from robolearn.errors import ConfigError, RobolearnError

T = TypeVar("T")
R = TypeVar("R")


class VLMError(RobolearnError):
    """The VLM endpoint cannot be used: unreachable, refused the key, no such model, no image input."""


class VLMAnswerError(VLMError):
    """The model's answer was not valid (not JSON, or not matching the schema) even after a re-ask."""


@dataclass
class VLMConfig:
    """Where the VLM is and how to talk to it (`--vlm.base-url`, `--vlm.model` on the CLI)."""

    base_url: str = "http://127.0.0.1:11434/v1"
    """OpenAI-compatible endpoint: vLLM http://HOST:8000/v1, Ollama http://127.0.0.1:11434/v1, llama.cpp :8080/v1"""
    model: str = "qwen2.5vl:7b"
    """model name as the server knows it (GET /v1/models lists them)"""
    api_key_env: str = "OPENAI_API_KEY"
    """environment variable holding the API key; local servers accept any key, so unset is fine for them"""
    timeout_s: float = 120.0
    """seconds to wait for one answer before retrying"""
    max_retries: int = 4
    """retries of a request after a 429, 5xx, timeout or dropped connection"""
    backoff_s: float = 1.0
    """first retry delay, doubled each retry (with jitter), unless the server sends Retry-After"""
    concurrency: int = 8
    """requests in flight at once in `map`"""
    temperature: float = 0.0
    """sampling temperature; 0 makes answers (and so cached reruns) repeatable"""
    max_tokens: int = 2048
    """answer length cap; an answer cut off here counts as malformed and is re-asked once"""
    json_mode: bool = True
    """send response_format json_object with schema requests (vLLM, Ollama, llama.cpp honour it)"""
    image_format: Literal["png", "jpeg"] = "png"
    """how frames are encoded inline: png is lossless, jpeg smaller"""
    cache_dir: str | None = "~/.cache/robolearn/vlm"
    """answers cached by request hash; null turns the cache off"""

    def validate(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"vlm.base_url {self.base_url!r} must be an http(s) URL, e.g. http://127.0.0.1:8000/v1")
        if not self.model:
            raise ConfigError("vlm.model is empty; name the model the server serves (GET <base_url>/models)")
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0:
            raise ConfigError(f"vlm: concurrency={self.concurrency} must be >= 1, max_retries={self.max_retries} "
                              f">= 0 and timeout_s={self.timeout_s} > 0")


def encode_image(image: np.ndarray, fmt: str = "png") -> str:
    """(H, W, 3) uint8 RGB -> a data URL."""
    import cv2

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ConfigError(f"an image for the VLM must be (H, W, 3) uint8 RGB; got {img.shape} {img.dtype}")
    ok, buf = cv2.imencode(".png" if fmt == "png" else ".jpg", np.ascontiguousarray(img[..., ::-1]))
    if not ok:
        raise ConfigError(f"could not encode a {img.shape} image as {fmt}")
    return f"data:image/{fmt};base64," + base64.b64encode(buf.tobytes()).decode()


def extract_json(text: str) -> Any:
    """The JSON value in a model's answer: the whole text, a ```json fenced block, or the outermost
    {...} / [...] span (models often wrap JSON in prose). Raises ValueError with the reason."""
    text = text.strip()
    candidates = [text]
    if "```" in text:
        for block in text.split("```")[1::2]:
            candidates.append(block.split("\n", 1)[1] if block.lstrip().startswith("json") else block)
    for open_, close in ("{}", "[]"):
        i, j = text.find(open_), text.rfind(close)
        if 0 <= i < j:
            candidates.append(text[i:j + 1])
    err = None
    for c in candidates:
        try:
            return json.loads(c)
        except json.JSONDecodeError as e:
            err = e
    raise ValueError(f"the answer is not JSON ({err})")


def validate_schema(value: Any, schema: dict[str, Any]) -> None:
    """Raise ValueError naming the first place `value` breaks the JSON schema."""
    import jsonschema

    try:
        _validator(json.dumps(schema, sort_keys=True)).validate(value)
    except jsonschema.ValidationError as e:
        where = "/".join(map(str, e.absolute_path)) or "(top level)"
        raise ValueError(f"at {where}: {e.message}") from None


@functools.lru_cache(maxsize=64)
def _validator(schema_json: str):
    """A compiled validator per schema (jsonschema.validate re-checks the schema itself on every call)."""
    import jsonschema

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ConfigError(f"invalid JSON schema for a VLM answer: {e.message}") from None
    return cls(schema)


class ResponseCache:
    """Validated answers on disk, one JSON file per request hash, behind a small in-memory LRU."""

    def __init__(self, directory: str | Path | None, memory_items: int = 4096):
        self.dir = Path(directory).expanduser() if directory else None
        self._mem: OrderedDict[str, str] = OrderedDict()
        self._cap = memory_items
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            if key in self._mem:
                self._mem.move_to_end(key)
                return self._mem[key]
        if self.dir is None:
            return None
        path = self.dir / key[:2] / f"{key}.json"
        try:
            text = json.loads(path.read_text())["content"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent, or a damaged entry: asked again and rewritten
        self._remember(key, text)
        return text

    def put(self, key: str, content: str, meta: dict[str, Any]) -> None:
        self._remember(key, content)
        if self.dir is not None:
            atomic_write_bytes(self.dir / key[:2] / f"{key}.json",
                               json.dumps({"content": content, **meta}).encode(), fsync=False)

    def _remember(self, key: str, text: str) -> None:
        with self._lock:
            self._mem[key] = text
            self._mem.move_to_end(key)
            while len(self._mem) > self._cap:
                self._mem.popitem(last=False)


@dataclass
class ClientStats:
    requests: int = 0
    """HTTP requests sent (retries included)"""
    cache_hits: int = 0
    retries: int = 0
    reasks: int = 0
    """answers re-asked once because they were malformed"""
    completion_tokens: int = 0


class VLMClient:
    """Ask a VLM through an OpenAI-compatible endpoint (see the module docstring)."""

    def __init__(self, cfg: VLMConfig, cache: ResponseCache | None = None):
        import openai

        cfg.validate()
        self.cfg = cfg
        self.cache = cache if cache is not None else ResponseCache(cfg.cache_dir)
        self.stats = ClientStats()
        self._stats_lock = threading.Lock()
        # retries are ours (backoff, Retry-After, clear final messages), so the SDK's are off
        self._openai = openai.OpenAI(base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env) or "not-needed",
                                     timeout=cfg.timeout_s, max_retries=0)

    # ---- asking ------------------------------------------------------------------------------
    def ask(self, prompt: str, images: Sequence[np.ndarray] = (), *, system: str | None = None) -> str:
        """The model's text answer to `prompt` with `images` (each (H, W, 3) uint8) after it."""
        return self._ask(prompt, images, system, None)

    def ask_json(self, prompt: str, images: Sequence[np.ndarray] = (), *, schema: dict[str, Any],
                 system: str | None = None, check: Callable[[Any], None] | None = None) -> Any:
        """The model's answer parsed as JSON and valid against `schema` (and `check`, a function that
        raises ValueError on an answer the schema cannot rule out, e.g. unordered boundaries)."""
        return json.loads(self._ask(prompt, images, system, (schema, check)))

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """fn over items with at most `concurrency` requests in flight, results in order."""
        items = list(items)
        if len(items) <= 1 or self.cfg.concurrency == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(min(self.cfg.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    def list_models(self) -> list[str]:
        """The model names the endpoint serves."""
        return [m.id for m in self._call(lambda: self._openai.models.list()).data]

    # ---- internals ---------------------------------------------------------------------------
    def _ask(self, prompt: str, images: Sequence[np.ndarray], system: str | None,
             structured: tuple[dict[str, Any], Callable[[Any], None] | None] | None) -> str:
        images = [np.asarray(im) for im in images]
        schema = structured[0] if structured else None
        key = self._key(prompt, images, system, schema)
        hit = self.cache.get(key)
        if hit is not None:
            with self._stats_lock:
                self.stats.cache_hits += 1
            return hit
        if structured:
            prompt_json = (f"{prompt}\n\nAnswer with one JSON value only, valid against this JSON schema:\n"
                           f"{json.dumps(schema)}")
            messages = self._messages(prompt_json, images, system)
            text, finish = self._complete(messages, json_mode=True)
            try:
                value = self._parse(text, finish, *structured)
            except ValueError as first:
                # one re-ask, quoting what was wrong (Text2Reward / Eureka feed errors back the same way)
                with self._stats_lock:
                    self.stats.reasks += 1
                messages += [{"role": "assistant", "content": text},
                             {"role": "user", "content": f"That answer was not usable: {first}. Answer again with "
                                                         "the JSON value only, matching the schema exactly."}]
                text, finish = self._complete(messages, json_mode=True)
                try:
                    value = self._parse(text, finish, *structured)
                except ValueError as second:
                    raise VLMAnswerError(
                        f"{self.cfg.model} at {self.cfg.base_url} gave an unusable answer twice ({second}); "
                        f"answer began {text[:120]!r}. Try a stronger model, a larger vlm.max_tokens or "
                        "vlm.json_mode=false if the server mishandles response_format") from None
            out = json.dumps(value)
        else:
            text, finish = self._complete(self._messages(prompt, images, system), json_mode=False)
            out = text
        self.cache.put(key, out, {"model": self.cfg.model, "created": time.time()})
        return out

    def _parse(self, text: str, finish: str | None, schema: dict[str, Any],
               check: Callable[[Any], None] | None) -> Any:
        if finish == "length":
            raise ValueError(f"the answer was cut off at max_tokens={self.cfg.max_tokens}; be shorter")
        value = extract_json(text)
        validate_schema(value, schema)
        if check is not None:
            check(value)
        return value

    def _key(self, prompt: str, images: list[np.ndarray], system: str | None, schema: dict | None) -> str:
        # images enter the hash as raw pixels, so a cache hit costs no image encoding
        h = hashlib.sha256()
        h.update(json.dumps([self.cfg.model, prompt, system, schema, self.cfg.temperature, self.cfg.max_tokens,
                             self.cfg.json_mode and schema is not None], sort_keys=True).encode())
        for im in images:
            h.update(f"{im.shape}{im.dtype}".encode())
            h.update(np.ascontiguousarray(im).data)
        return h.hexdigest()

    def _messages(self, prompt: str, images: list[np.ndarray], system: str | None) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        content += [{"type": "image_url", "image_url": {"url": encode_image(im, self.cfg.image_format)}}
                    for im in images]
        messages = [{"role": "system", "content": system}] if system else []
        return messages + [{"role": "user", "content": content if images else prompt}]

    def _complete(self, messages: list[dict[str, Any]], json_mode: bool) -> tuple[str, str | None]:
        kwargs: dict[str, Any] = {"model": self.cfg.model, "messages": messages, "temperature": self.cfg.temperature,
                                  "max_tokens": self.cfg.max_tokens}
        if json_mode and self.cfg.json_mode:
            kwargs["response_format"] = {"type": "json_object"}
        resp = self._call(lambda: self._openai.chat.completions.create(**kwargs))
        if not resp.choices:
            raise VLMAnswerError(f"{self.cfg.model} at {self.cfg.base_url} answered with no choices")
        choice = resp.choices[0]
        if resp.usage is not None:
            with self._stats_lock:
                self.stats.completion_tokens += resp.usage.completion_tokens or 0
        return choice.message.content or "", choice.finish_reason

    def _call(self, fn: Callable[[], R]) -> R:
        """fn() with retries on transient failures and one clear message on permanent ones."""
        import openai

        url, model = self.cfg.base_url, self.cfg.model
        delay = self.cfg.backoff_s
        for attempt in range(self.cfg.max_retries + 1):
            with self._stats_lock:
                self.stats.requests += 1
                self.stats.retries += attempt > 0
            try:
                return fn()
            except openai.AuthenticationError:
                raise VLMError(f"{url} refused the API key (401); set ${self.cfg.api_key_env} to a valid key "
                               "(or point vlm.api_key_env at the variable that holds it)") from None
            except openai.PermissionDeniedError as e:
                raise VLMError(f"{url} denied access to {model!r} (403: {_message(e)}); check the key's "
                               "permissions") from None
            except openai.NotFoundError as e:
                raise VLMError(f"{url} has no model {model!r} (404: {_message(e)}); pass one it serves with "
                               f"--vlm.model (GET {url.rstrip('/')}/models lists them)") from None
            except openai.BadRequestError as e:
                msg = _message(e)
                if any(w in msg.lower() for w in ("image", "multimodal", "vision", "multi-modal")):
                    raise VLMError(f"{model!r} at {url} does not take images ({msg}); use a vision-language "
                                   "model, e.g. Qwen2.5-VL, LLaVA or Gemma 3") from None
                raise VLMError(f"{url} rejected the request (400: {msg})") from None
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError, openai.APIResponseValidationError, json.JSONDecodeError) as e:
                # JSONDecodeError: a 200 whose body is not JSON (a proxy's error page, a cut stream)
                last = e
                if isinstance(e, openai.APIStatusError) and e.status_code < 500 and e.status_code != 429:
                    raise VLMError(f"{url} answered {e.status_code}: {_message(e)}") from None
                if attempt == self.cfg.max_retries:
                    break
                wait = _retry_after(e) or delay * (0.5 + random.random())
                time.sleep(min(wait, 60.0))
                delay *= 2
            except openai.APIStatusError as e:
                raise VLMError(f"{url} answered {e.status_code}: {_message(e)}") from None
        if isinstance(last, openai.APIConnectionError) and not isinstance(last, openai.APITimeoutError):
            raise VLMError(f"cannot reach the VLM endpoint {url} ({_cause(last)}) after {self.cfg.max_retries + 1} "
                           "tries; start the server (e.g. `ollama serve`, `vllm serve MODEL`) or pass "
                           "--vlm.base-url") from None
        if isinstance(last, openai.APITimeoutError):
            raise VLMError(f"{url} did not answer within vlm.timeout_s={self.cfg.timeout_s} s, "
                           f"{self.cfg.max_retries + 1} times; raise vlm.timeout_s or check the server's load"
                           ) from None
        if isinstance(last, json.JSONDecodeError):
            raise VLMError(f"{url} answered with a body that is not JSON ({last}), {self.cfg.max_retries + 1} "
                           "times; is base_url the OpenAI-compatible /v1 root of the server?") from None
        status = getattr(last, "status_code", "?")
        raise VLMError(f"{url} kept failing ({status}: {_message(last)}) after {self.cfg.max_retries + 1} tries; "
                       "wait and rerun (answers so far are cached) or raise vlm.max_retries") from None


def _message(e: Exception) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(body.get("message"), str):
            return body["message"]
    return str(getattr(e, "message", e))


def _cause(e: Exception) -> str:
    c = e.__cause__ or e.__context__
    return str(c) if c else str(e)


def _retry_after(e: Exception) -> float | None:
    response = getattr(e, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def connect(cfg: VLMConfig, cache: ResponseCache | None = None) -> VLMClient:
    """A client for `cfg`, checked once against the endpoint (reachable, key accepted, model served)
    so a pipeline fails in its first second, not after an hour of preparation."""
    client = VLMClient(cfg, cache)
    try:
        models = client.list_models()
    except VLMError as e:
        if "404" not in str(e):
            raise
        return client  # a server without GET /models: the first request will tell
    if cfg.model not in models:
        raise VLMError(f"{cfg.base_url} has no model {cfg.model!r}; it serves {', '.join(models) or 'none'} "
                       "(pass one with --vlm.model)")
    return client
