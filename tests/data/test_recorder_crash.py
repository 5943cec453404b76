"""A recording killed with SIGKILL at any moment loses no finished episode and reopens for appending.

The recorder runs in a real subprocess and is killed with `kill -9` at random points: while episodes
are being committed, and while `close()` packs the one-episode files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robolearn.data import DatasetReader, DatasetWriter, EpisodeRecord, Feature

FEATURES = {
    "observation.state": Feature("float32", (4,)),
    "observation.images.cam": Feature("video", (16, 16, 3)),
    "action": Feature("float32", (2,)),
}

RECORDER = r'''
import sys, numpy as np
sys.path.insert(0, {tests!r})
from test_recorder_crash import FEATURES, episode
from robolearn.data import DatasetWriter, EpisodeRecord
root, mode = sys.argv[1], sys.argv[2]
w = DatasetWriter.create(root, FEATURES, fps=10) if mode != "append" else DatasetWriter.open(root)
start = len(w.episodes)
for k in range(start, 10_000):
    w.add_episode(episode(k), EpisodeRecord(task="t", success=bool(k % 2), info={{"k": k}}))
    print("committed", k, flush=True)
    if mode == "close" and k == 11:
        print("closing", flush=True)
        w.close()
        print("closed", flush=True)
        break
'''


def episode(k: int) -> dict[str, np.ndarray]:
    """Deterministic content of episode k (so a reader can check every value after the crash)."""
    rng = np.random.default_rng(k)
    t = 5 + k % 7
    img = np.zeros((t, 16, 16, 3), np.uint8)
    img[:] = (np.arange(16, dtype=np.uint8) * 12)[None, None, :, None]
    img += np.uint8(k % 5 * 10)
    return {"observation.state": rng.normal(size=(t, 4)).astype(np.float32),
            "observation.images.cam": img, "action": rng.normal(size=(t, 2)).astype(np.float32)}


def _start(root: Path, mode: str) -> subprocess.Popen:
    code = RECORDER.format(tests=str(Path(__file__).parent))
    return subprocess.Popen([sys.executable, "-c", code, str(root), mode], stdout=subprocess.PIPE, text=True)


def _kill_after(proc: subprocess.Popen, marker: str, delay: float) -> list[str]:
    """Read lines until `marker` appears, wait `delay` s, then SIGKILL; returns the lines read."""
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if line.startswith(marker):
            break
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the recorder ended before it was killed; shorten the delay"
    lines += [x.strip() for x in proc.stdout.read().splitlines()]
    return lines


def _check(root: Path, at_least: int) -> int:
    r = DatasetReader(root)
    assert r.num_episodes >= at_least
    for k in range(r.num_episodes):
        want, got = episode(k), r.episode(k)
        np.testing.assert_array_equal(got["observation.state"], want["observation.state"])
        np.testing.assert_array_equal(got["action"], want["action"])
        assert np.abs(got["observation.images.cam"].astype(int) - want["observation.images.cam"]).mean() < 4
        assert r.meta.episode_info(k) == {"k": k}
    return r.num_episodes


@pytest.mark.parametrize("delay", [0.0, 0.013, 0.029, 0.047])
def test_kill_while_recording(tmp_path, delay):
    root = tmp_path / "ds"
    lines = _kill_after(_start(root, "record"), "committed 3", delay)
    committed = sum(x.startswith("committed") for x in lines)
    n = _check(root, committed)  # every episode reported finished is there, intact
    # the dataset reopens for appending and ends up whole and packed
    with DatasetWriter.open(root) as w:
        assert len(w.episodes) == n
        for k in range(n, n + 2):
            w.add_episode(episode(k), EpisodeRecord(task="t", info={"k": k}))
    assert _check(root, n + 2) == n + 2
    assert len(list((root / "data").rglob("*.parquet"))) == 1  # packed on close
    assert not list(root.rglob(".*.tmp*"))


@pytest.mark.parametrize("delay", [0.0, 0.005, 0.02])
def test_kill_while_packing(tmp_path, delay):
    root = tmp_path / "ds"
    proc = _start(root, "close")
    lines = _kill_after(proc, "closing", delay)
    assert _check(root, 12) == 12  # packing never loses or breaks an episode
    with DatasetWriter.open(root) as w:  # and a half-done pack is cleaned up on reopen
        w.add_episode(episode(12), EpisodeRecord(task="t", info={"k": 12}))
    assert _check(root, 13) == 13
    files = {p.relative_to(root).as_posix() for p in root.rglob("file-*")}
    r = DatasetReader(root)
    used = {r.meta.data_path(row).relative_to(root).as_posix() for row in r.meta.episode_rows}
    used |= {r.meta.video_path(row, "observation.images.cam").relative_to(root).as_posix()
             for row in r.meta.episode_rows}
    assert files - {p for p in files if p.startswith("meta/")} == used, "orphaned files were left behind"
    del lines


def test_kill_real_collect_then_resume(tmp_path):
    """`robolearn collect` itself, killed mid-run, then resumed with --resume to the requested count."""
    root = tmp_path / "lift"
    cmd = [sys.executable, "-m", "robolearn.cli.main", "collect", "--task", "lift", "--episodes", "40",
           "--out", str(root), "num_envs=2", "num_threads=1", "cameras=[front]", "image_size=[32,32]",
           "progress=false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    info = root / "meta" / "info.json"
    while time.time() < deadline:
        if info.exists() and json.loads(info.read_text())["total_episodes"] >= 3:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    else:
        pytest.fail("collect did not record 3 episodes in 120 s")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    r = DatasetReader(root)
    n = r.num_episodes
    assert n >= 3
    r.episode(n - 1)  # the last committed episode decodes
    done = subprocess.run(cmd[:7] + [str(n + 2)] + cmd[8:] + ["--resume"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    r = DatasetReader(root)
    assert r.num_episodes == n + 2
    seeds = [r.meta.episode_info(e)["reset"]["rng_state"]["state"]["state"] for e in range(r.num_episodes)]
    assert len(set(seeds)) == len(seeds), "a resumed collect repeated episodes it already had"
