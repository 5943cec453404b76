"""`robolearn bench vlm`: the sandbox, the client and the cache against their targets and their peers.

- sandbox: a lift reward program over 1,024 envs per call through the worker process (IPC, checks and
  all), against the same program run in-process with plain numpy (the peer: what it costs without
  isolation). Target >= 20,000 env-evaluations/s.
- client: requests through the real client to the loopback server with `latency_ms` injected per
  answer and `concurrency` in flight, against the ideal concurrency / latency. Target >= 30 req/s.
- cache: a repeated request with a 224x224 image (hash of the request incl. pixels + lookup),
  against an uncached request to a zero-latency server. Target < 1 ms.
- hostile: every program of `robolearn.rewards.vlm.hostile` blocked with no side effect.

Medians over repeats (these machines are noisy); writes JSON with the keys sandbox_evals_per_s,
client_requests_per_s, cache_hit_ms, hostile_blocked, hostile_total (and the details).
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.data.format import atomic_write_json


@dataclass
class VLMBenchConfig:
    """What `robolearn bench vlm` measures."""

    json_path: str = "bench/results/vlm.json"
    """JSON report path"""
    n_envs: int = 1024
    """envs per sandbox call"""
    sandbox_calls: int = 200
    """timed sandbox calls"""
    latency_ms: float = 200.0
    """latency the loopback server adds to every answer"""
    concurrency: int = 8
    """client requests in flight"""
    requests: int = 160
    """timed client requests per repeat"""
    repeats: int = 3
    """repeats of the client measurement (median reported)"""
    hostile: bool = True
    """run the hostile suite"""


def _sandbox(cfg: VLMBenchConfig) -> dict[str, Any]:
    from robolearn.rewards.vlm.hostile import LIFT, batch
    from robolearn.rewards.vlm.sandbox import RewardSandbox

    obs, action = batch(cfg.n_envs)
    with RewardSandbox(LIFT) as box:
        box.evaluate(obs, action)  # start the worker
        times = []
        for _ in range(cfg.sandbox_calls):
            t = time.perf_counter()
            box.evaluate(obs, action)
            times.append(time.perf_counter() - t)
    ns: dict[str, Any] = {"np": np, "math": __import__("math")}
    exec(compile(LIFT, "<lift reward>", "exec"), ns)  # trusted: our own program, the in-process peer
    peer = []
    for _ in range(cfg.sandbox_calls):
        t = time.perf_counter()
        ns["compute_reward"](obs, action)
        peer.append(time.perf_counter() - t)
    med, p90, pmed = float(np.median(times)), float(np.percentile(times, 90)), float(np.median(peer))
    return {"sandbox_evals_per_s": cfg.n_envs / med, "sandbox_ms_per_call_median": med * 1e3,
            "sandbox_ms_per_call_p90": p90 * 1e3, "in_process_evals_per_s": cfg.n_envs / pmed,
            "sandbox_overhead_ms": (med - pmed) * 1e3}


def _client(cfg: VLMBenchConfig) -> dict[str, Any]:
    from robolearn.rewards.vlm.client import VLMClient, VLMConfig
    from robolearn.rewards.vlm.server import FixtureServer

    schema = {"type": "object", "properties": {"stage": {"type": "string"}}, "required": ["stage"]}
    rates = []
    with FixtureServer('{"stage": "grasp"}', latency_s=cfg.latency_ms / 1e3) as server:
        client = VLMClient(VLMConfig(base_url=server.base_url, model=server.model, cache_dir=None,
                                     concurrency=cfg.concurrency))
        client.map(lambda i: client.ask_json(f"warm-up {i}", schema=schema), range(cfg.concurrency))
        for r in range(cfg.repeats):
            t = time.perf_counter()
            client.map(lambda i, r=r: client.ask_json(f"request {r}-{i}", schema=schema), range(cfg.requests))
            rates.append(cfg.requests / (time.perf_counter() - t))
    return {"client_requests_per_s": float(np.median(rates)), "client_requests_per_s_repeats": rates,
            "client_ideal_requests_per_s": cfg.concurrency / (cfg.latency_ms / 1e3)}


def _cache(cfg: VLMBenchConfig, tmp: Path) -> dict[str, Any]:
    from robolearn.rewards.vlm.client import VLMClient, VLMConfig
    from robolearn.rewards.vlm.server import FixtureServer

    schema = {"type": "object", "properties": {"stage": {"type": "string"}}, "required": ["stage"]}
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    with FixtureServer('{"stage": "grasp"}') as server:
        client = VLMClient(VLMConfig(base_url=server.base_url, model=server.model, cache_dir=str(tmp)))
        miss = []
        for i in range(20):
            t = time.perf_counter()
            client.ask_json(f"which stage? {i}", [image], schema=schema)
            miss.append(time.perf_counter() - t)
        hits = []
        for _ in range(200):
            t = time.perf_counter()
            client.ask_json("which stage? 0", [image], schema=schema)
            hits.append(time.perf_counter() - t)
        # a fresh client (a rerun of the pipeline): the first read of each entry comes from disk
        fresh = VLMClient(VLMConfig(base_url=server.base_url, model=server.model, cache_dir=str(tmp)))
        disk = []
        for i in range(20):
            t = time.perf_counter()
            fresh.ask_json(f"which stage? {i}", [image], schema=schema)
            disk.append(time.perf_counter() - t)
    return {"cache_hit_ms": float(np.median(hits)) * 1e3, "cache_hit_disk_ms": float(np.median(disk)) * 1e3,
            "uncached_loopback_ms": float(np.median(miss)) * 1e3}


def run(cfg: VLMBenchConfig) -> dict[str, Any]:
    import tempfile

    report: dict[str, Any] = {"machine": platform.platform(), "python": platform.python_version(),
                              "n_envs": cfg.n_envs, "latency_ms": cfg.latency_ms, "concurrency": cfg.concurrency}
    report.update(_sandbox(cfg))
    report.update(_client(cfg))
    with tempfile.TemporaryDirectory() as tmp:
        report.update(_cache(cfg, Path(tmp)))
    if cfg.hostile:
        from robolearn.rewards.vlm.hostile import run_suite

        rows = run_suite()
        report.update(hostile_blocked=sum(r["blocked"] for r in rows), hostile_total=len(rows),
                      hostile_side_effects=sum(r["side_effect"] for r in rows), hostile=rows)
    print(format_report(report))
    if cfg.json_path:
        atomic_write_json(Path(cfg.json_path), report)
        print(f"wrote {cfg.json_path}")
    return report


def format_report(r: dict[str, Any]) -> str:
    rows = [
        ("sandbox env-evals/s (1,024 envs/call)", f"{r['sandbox_evals_per_s']:,.0f}", ">= 20,000",
         f"in-process numpy {r['in_process_evals_per_s']:,.0f}/s; overhead {r['sandbox_overhead_ms']:.2f} ms/call"),
        ("client requests/s", f"{r['client_requests_per_s']:.1f}", ">= 30",
         f"ideal {r['client_ideal_requests_per_s']:.0f} ({r['concurrency']} x 1/{r['latency_ms']:.0f} ms)"),
        ("cache hit (224x224 image)", f"{r['cache_hit_ms']:.3f} ms", "< 1 ms",
         f"from disk {r['cache_hit_disk_ms']:.3f} ms; uncached loopback {r['uncached_loopback_ms']:.2f} ms"),
    ]
    if "hostile_total" in r:
        rows.append(("hostile programs blocked", f"{r['hostile_blocked']}/{r['hostile_total']}", "all",
                     f"{r['hostile_side_effects']} with a side effect"))
    w = [max(len(x[i]) for x in rows) for i in range(4)]
    lines = [f"{'figure':<{w[0]}}  {'value':>{w[1]}}  {'target':<{w[2]}}  peer / detail"]
    lines += [f"{a:<{w[0]}}  {b:>{w[1]}}  {c:<{w[2]}}  {d}" for a, b, c, d in rows]
    return "\n".join(lines)
