"""Dataset throughput benchmark: recording and training-window loading, against robomimic-style HDF5.

The episodes are real: the scripted expert of `task` is recorded once (state, environment state, one
84x84 camera), read back into memory, and then every contender writes or reads exactly those frames.

  record_fps               frames/s that DatasetWriter commits (frame table + H.264 video + metadata,
                           each episode atomically, fsync on), packing on close included
  hdf5_record_fps          frames/s written as robomimic lays out HDF5 (data/demo_k/obs/<key>, actions,
                           rewards, dones; images as raw uint8, h5py defaults), flushed after each demo
  load_windows_per_s       training windows/s from WindowDataset.loader(num_workers=2, shuffled, batch 64),
                           decoding the video frames of every window
  hdf5_load_windows_per_s  the same windows (same shapes, padding and float images) read from the HDF5
                           file with h5py by the same batched loader

Repeats are interleaved (ours, then HDF5, in each repeat) so that machine noise hits both; figures are
medians over repeats and ratios are medians of per-repeat ratios.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

TARGETS = {"record_fps": 1000.0, "load_windows_per_s": 2000.0}


@dataclass
class DataBenchConfig:
    """What `robolearn bench data` measures."""

    task: str = "lift"
    """task whose scripted-expert episodes are the benchmark data"""
    episodes: int = 50
    """episodes of benchmark data"""
    camera: str = "front"
    """the one camera recorded"""
    image_size: tuple[int, int] = (84, 84)
    """camera (height, width), pixels"""
    repeats: int = 3
    """interleaved timed repeats per contender"""
    batch_size: int = 64
    """windows per batch when loading"""
    num_workers: int = 2
    """DataLoader worker processes when loading"""
    n_obs_steps: int = 2
    """observation history of a window"""
    horizon: int = 16
    """action chunk of a window"""
    load_windows: int = 8192
    """windows read per timed loading run (after one warm-up batch per worker)"""
    quick: bool = False
    """smoke run: 8 episodes, 1 repeat, 2048 windows"""
    json_path: str = "bench/results/data_throughput.json"
    """where the JSON report is written"""


def run(cfg: DataBenchConfig) -> dict:
    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect
    from robolearn.data.dataset import DatasetReader
    from robolearn.sim.bench import machine_info, write_report

    if cfg.quick:
        cfg.episodes, cfg.repeats, cfg.load_windows = 8, 1, 2048
    machine = machine_info(("torch", "pyarrow", "av", "h5py"))
    work = Path(tempfile.mkdtemp(prefix="robolearn-bench-data-"))
    try:
        print(f"recording {cfg.episodes} {cfg.task} expert episodes as benchmark data ...")
        src = collect(CollectConfig(task=cfg.task, episodes=cfg.episodes, out=str(work / "source"), num_envs=8,
                                    cameras=[cfg.camera], image_size=tuple(cfg.image_size), progress=False))
        reader = DatasetReader(src)
        episodes = [reader.episode(e) for e in range(reader.num_episodes)]
        frames = int(reader.lengths.sum())
        features = reader.features
        runs: dict[str, list[float]] = {k: [] for k in ("record_fps", "hdf5_record_fps", "load_windows_per_s",
                                                        "hdf5_load_windows_per_s", "record_fps_no_fsync")}
        for r in range(cfg.repeats):
            print(f"repeat {r + 1}/{cfg.repeats}")
            runs["record_fps"].append(frames / _time_ours(work / f"ours{r}", features, reader.fps, episodes, True))
            runs["hdf5_record_fps"].append(frames / _time_hdf5(work / f"h5{r}.hdf5", episodes))
            runs["record_fps_no_fsync"].append(frames / _time_ours(work / f"nofsync{r}", features, reader.fps,
                                                                   episodes, False))
            runs["load_windows_per_s"].append(_load_rate(_ours_windows(work / f"ours{r}", cfg), cfg))
            runs["hdf5_load_windows_per_s"].append(_load_rate(HDF5Windows(work / f"h5{r}.hdf5", cfg), cfg))
            for p in (work / f"nofsync{r}",):
                shutil.rmtree(p, ignore_errors=True)
        sizes = {"dataset_mb": _du(work / "ours0") / 2**20, "hdf5_mb": (work / "h50.hdf5").stat().st_size / 2**20}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(runs[a], runs[b]))  # noqa: E731
    report = {
        **{k: round(v, 1) for k, v in med.items()},
        "record_vs_hdf5": round(ratio("record_fps", "hdf5_record_fps"), 3),
        "load_vs_hdf5": round(ratio("load_windows_per_s", "hdf5_load_windows_per_s"), 3),
        "targets": TARGETS,
        "pass": {k: med[k] >= v for k, v in TARGETS.items()},
        "runs": runs,
        "sizes_mb": {k: round(v, 2) for k, v in sizes.items()},
        "data": {"task": cfg.task, "episodes": cfg.episodes, "frames": frames, "camera": cfg.camera,
                 "image_size": list(cfg.image_size)},
        "config": asdict(cfg),
        "machine": machine,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print(format_table(report))
    write_report(report, cfg.json_path)
    return report


def format_table(r: dict) -> str:
    rows = [
        ("recording, frames/s", r["record_fps"], r["hdf5_record_fps"], r["record_vs_hdf5"], "record_fps"),
        ("loading, windows/s", r["load_windows_per_s"], r["hdf5_load_windows_per_s"], r["load_vs_hdf5"],
         "load_windows_per_s"),
    ]
    lines = [f"{'':24}{'robolearn':>12}{'HDF5':>12}{'ratio':>8}{'target':>10}  ",
             "-" * 72]
    for name, ours, h5, ratio, key in rows:
        ok = "PASS" if r["pass"][key] else "FAIL"
        lines.append(f"{name:24}{ours:>12.0f}{h5:>12.0f}{ratio:>8.2f}{'>= ' + str(int(TARGETS[key])):>10}  {ok}")
    lines.append(f"(recording without fsync: {r['record_fps_no_fsync']:.0f} frames/s; sizes on disk: "
                 f"{r['sizes_mb']['dataset_mb']:.1f} MB vs HDF5 {r['sizes_mb']['hdf5_mb']:.1f} MB)")
    return "\n".join(lines)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _time_ours(root: Path, features, fps: int, episodes: list[dict], fsync: bool) -> float:
    from robolearn.data.writer import DatasetWriter, EpisodeRecord

    t = time.perf_counter()
    with DatasetWriter.create(root, features, fps, fsync=fsync) as w:
        for ep in episodes:
            w.add_episode(ep, EpisodeRecord("benchmark"))
    return time.perf_counter() - t


def _time_hdf5(path: Path, episodes: list[dict]) -> float:
    import h5py

    t = time.perf_counter()
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for k, ep in enumerate(episodes):
            g = data.create_group(f"demo_{k}")
            g.attrs["num_samples"] = len(ep["action"])
            for key, v in ep.items():
                if key.startswith("observation."):
                    g.create_dataset(f"obs/{key.removeprefix('observation.').replace('.', '_')}", data=v)
            g.create_dataset("actions", data=ep["action"])
            g.create_dataset("rewards", data=ep["next.reward"])
            g.create_dataset("dones", data=ep["next.done"])
            f.flush()
        data.attrs["total"] = sum(len(ep["action"]) for ep in episodes)
    return time.perf_counter() - t


def _ours_windows(root: Path, cfg: DataBenchConfig):
    from robolearn.data.windows import WindowDataset

    return WindowDataset(root, cfg.n_obs_steps, cfg.horizon)


def _load_rate(ds, cfg: DataBenchConfig) -> float:
    loader = ds.loader(batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers, seed=0)
    it = iter(loader)
    n = 0
    for _ in range(max(cfg.num_workers, 1)):  # worker start-up and first files opened: not timed
        next(it)
    t = time.perf_counter()
    while n < cfg.load_windows:
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n += len(b["action"])
    rate = n / (time.perf_counter() - t)
    del it, loader
    return rate


class HDF5Windows(torch.utils.data.Dataset):
    """The peer: the same windows as WindowDataset, read from robomimic-style HDF5 with h5py (file
    opened lazily in each worker), fetched a batch at a time like WindowDataset.loader does."""

    def __init__(self, path: Path, cfg: DataBenchConfig):
        import h5py

        self.path, self.n_obs, self.horizon = path, cfg.n_obs_steps, cfg.horizon
        with h5py.File(path, "r") as f:
            demos = sorted(f["data"], key=lambda s: int(s.split("_")[1]))
            self.demos = demos
            self.lengths = np.array([f["data"][d].attrs["num_samples"] for d in demos])
            self.obs_keys = list(f["data"][demos[0]]["obs"])
        self._ep = np.repeat(np.arange(len(demos)), self.lengths)
        self._t = np.concatenate([np.arange(n) for n in self.lengths])
        self._file = None

    def __len__(self) -> int:
        return len(self._ep)

    def __getitem__(self, idx) -> dict[str, torch.Tensor]:
        import h5py

        if self._file is None:
            self._file = h5py.File(self.path, "r")
        out: dict[str, list] = {}
        for i in np.atleast_1d(idx):
            g = self._file["data"][self.demos[self._ep[i]]]
            n, t = int(self.lengths[self._ep[i]]), int(self._t[i])
            lo, hi = max(0, t - self.n_obs + 1), t + 1
            pad_front = self.n_obs - (hi - lo)
            for k in self.obs_keys:
                v = g["obs"][k][lo:hi]
                v = np.concatenate([np.repeat(v[:1], pad_front, 0), v]) if pad_front else v
                if v.dtype == np.uint8:
                    v = torch.from_numpy(v).permute(0, 3, 1, 2).float().div_(255.0)
                out.setdefault(k, []).append(torch.as_tensor(v, dtype=torch.float32))
            a = g["actions"][t: t + self.horizon]
            pad = np.zeros(self.horizon, bool)
            if len(a) < self.horizon:
                pad[len(a):] = True
                a = np.concatenate([a, np.repeat(a[-1:], self.horizon - len(a), 0)])
            out.setdefault("action", []).append(torch.from_numpy(a))
            out.setdefault("action_is_pad", []).append(torch.from_numpy(pad))
            del n
        return {k: torch.stack(v) for k, v in out.items()}

    def __getstate__(self):
        return {**self.__dict__, "_file": None}

    def loader(self, batch_size: int, shuffle: bool, num_workers: int, seed: int = 0):
        from torch.utils.data import BatchSampler, DataLoader, RandomSampler

        sampler = BatchSampler(RandomSampler(self, generator=torch.Generator().manual_seed(seed)), batch_size, False)
        return DataLoader(self, sampler=sampler, batch_size=None, num_workers=num_workers,
                          persistent_workers=num_workers > 0)
