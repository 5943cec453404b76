"""`robolearn replay`: re-execute an episode's recorded actions in sim from its recorded reset.

The env is rebuilt from the recording's env config (meta/robolearn.json), reset exactly as the
recorded episode was (same RNG state, so the same randomization and initial state, checked against
the recorded physics state), then driven by the recorded actions. It reports how far the replayed
states drift from the recorded ones: per frame for observation.state, and for the full physics
state at the end. MuJoCo is deterministic, so a sim episode replays to within floating-point
round-off (the determinism test asks for 1e-6); a large divergence means the simulator, the task or
the env config changed since the recording.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robolearn.data.dataset import DatasetReader
from robolearn.data.format import DatasetError


@dataclass
class ReplayConfig:
    """What `robolearn replay` re-executes."""

    dataset: str = ""
    """dataset directory recorded in sim (by `robolearn collect`)"""
    episode: int = 0
    """episode index"""
    video: str = ""
    """also write the replay's camera view to this mp4 (side by side with the recording when it has one)"""
    camera: str = "front"
    """camera of the video"""


def run(cfg: ReplayConfig) -> dict:
    """Replay one episode; returns the divergences (also printed as a table)."""
    from robolearn.sim.registry import make_env
    from robolearn.sim.vec_env import VecEnv

    reader = DatasetReader(cfg.dataset)
    meta = reader.meta
    env_cfg = meta.robolearn.get("env")
    if not env_cfg:
        raise DatasetError(f"{Path(cfg.dataset) / 'meta/robolearn.json'} has no env config: this dataset was not "
                           "recorded in robolearn's sim (replay needs the task and env settings)")
    if not 0 <= cfg.episode < reader.num_episodes:
        raise DatasetError(f"{cfg.dataset}: episode {cfg.episode} does not exist (0..{reader.num_episodes - 1})")
    info = meta.episode_info(cfg.episode)
    if "reset" not in info:
        raise DatasetError(f"{cfg.dataset}: episode {cfg.episode} has no recorded reset state; only episodes "
                           "recorded by `robolearn collect` can be replayed")
    want_video = bool(cfg.video)
    overrides = {"num_envs": 1, "num_threads": 1, "cameras": [cfg.camera] if want_video else [],
                 "pointcloud": {"enabled": False}, "terminate_on_success": False, "max_episode_steps": 10**9}
    env = make_env(env_cfg["task"], **{**{k: v for k, v in env_cfg.items() if k != "task"}, **overrides})
    if not isinstance(env, VecEnv):
        raise DatasetError(f"{cfg.dataset}: task {env_cfg['task']!r} cannot be replayed (not a native task)")
    try:
        ep = reader.episode(cfg.episode, keys=["observation.state", "action"])
        obs = env.restore_reset(0, info["reset"]["rng_state"])
        recorded_init = np.asarray(info["reset"]["physics_state"])
        init_div = float(np.abs(env.reset_states[0]["physics_state"] - recorded_init).max())
        actions = ep["action"]
        states = [obs["observation.state"][0]]
        frames = [env.render(cfg.camera)[0]] if want_video else []
        for a in actions:
            obs, _, _, _, step_info = env.step(a[None])
            states.append(obs["observation.state"][0])
            if want_video:
                frames.append(env.render(cfg.camera)[0])
        from robolearn.sim.vec_env import physics_state

        final = physics_state(env.models[0], env.datas[0])
        success = bool(step_info["success"][0])
    finally:
        env.close()
    states = np.stack(states)
    per_frame = np.abs(states[: len(actions)] - ep["observation.state"]).max(axis=1)
    recorded_final = info.get("final_physics_state")
    final_div = float(np.abs(final - np.asarray(recorded_final)).max()) if recorded_final is not None else None
    result = {
        "episode": cfg.episode, "frames": len(actions), "initial_state_divergence": init_div,
        "max_state_divergence": float(per_frame.max()), "final_state_divergence": final_div,
        "recorded_success": meta.success(cfg.episode), "replayed_success": success,
    }
    if want_video:
        _write_video(cfg, reader, np.stack(frames[: len(actions)]))
        result["video"] = cfg.video
    return result


def _write_video(cfg: ReplayConfig, reader: DatasetReader, replay: np.ndarray) -> None:
    from robolearn.video import write_mp4

    key = f"observation.images.{cfg.camera}"
    if key in reader.video_keys:
        rec = reader.episode(cfg.episode, keys=[key])[key]
        if rec.shape == replay.shape:
            replay = np.concatenate([rec, replay], axis=2)  # recording | replay
    write_mp4(cfg.video, replay, reader.fps)


def format_result(r: dict) -> str:
    lines = [f"replay of episode {r['episode']} ({r['frames']} frames)"]
    lines.append(f"  initial physics state divergence   {r['initial_state_divergence']:.3g}")
    lines.append(f"  max observation.state divergence   {r['max_state_divergence']:.3g}")
    if r["final_state_divergence"] is not None:
        lines.append(f"  final physics state divergence     {r['final_state_divergence']:.3g}")
    lines.append(f"  success recorded / replayed        {r['recorded_success']} / {r['replayed_success']}")
    if "video" in r:
        lines.append(f"  video                              {r['video']}")
    return "\n".join(lines)
