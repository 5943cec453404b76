"""`RewardWrapper`: a learned reward around any robolearn vector env.

    env = make_env("pick_place", num_envs=16, cameras=["front"])
    env = RewardWrapper(env, load_reward_model("runs/reward/pick_place/checkpoints/last"),
                        ShapingConfig(mode="potential", gamma=0.99))
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(actions)   # reward: the shaped (N,) reward

Works with anything that has our vector interface (the native `VecEnv`, the robosuite adapter):
`num_envs`, `reset`, and `step` with same-step auto-reset (`final_obs` in the infos). Every step
scores all envs in one batched call through the inference engine, which keeps each env's frame
history: an env that finished is scored on its final observation (what the step reached), then its
history is reset and its next episode's first observation is scored as the new potential.

The step's info gains `reward_terms` entries `learned/sparse`, `learned/shaping`, `learned/total`,
`learned/progress` (N,) (next to the env's own named terms), plus `progress` and `stage` of the
state reached. The env's own reward is kept in `info["env_reward"]`.
"""

from __future__ import annotations

import numpy as np

from robolearn.errors import ConfigError, RobolearnError
from robolearn.rewards.base import RewardModel
from robolearn.rewards.shaping import ShapingConfig, shaped_reward


def reached_obs(obs: dict, info: dict, keys, ended: np.ndarray) -> dict[str, np.ndarray]:
    """obs[k] for `keys`, with each finished env's final observation in place of its next episode's first
    (same-step auto-reset): the state each step actually reached."""
    reached = {k: np.asarray(obs[k]) for k in keys}
    if len(ended):
        reached = {k: v.copy() for k, v in reached.items()}
        for i in ended:
            for k in keys:
                reached[k][i] = info["final_obs"][i][k]
    return reached


def sparse_reward(shaping: ShapingConfig, info: dict, env_reward, ended: np.ndarray, n: int) -> np.ndarray:
    """The sparse reward r of a step as `shaping.sparse` chooses it: the task's success (a finished env's
    from its final info), the env's own reward, or none."""
    if shaping.sparse == "success":
        sparse = np.asarray(info.get("success", np.zeros(n)), np.float64).copy()
        final = info.get("final_info", {}).get("success") if len(ended) else None
        if final is not None:
            sparse[ended] = np.asarray(final, np.float64)[ended]
        return sparse
    if shaping.sparse == "env":
        return np.asarray(env_reward, np.float64)
    return np.zeros(n)


class RewardError(RobolearnError, ValueError):
    """A learned reward came out NaN or infinite."""


class RewardWrapper:
    """Replace a vector env's reward by a shaped learned reward (see the module docstring)."""

    def __init__(self, env, model: RewardModel, shaping: ShapingConfig | None = None, device: str = "auto"):
        from robolearn.inference.engine import InferenceEngine
        from robolearn.rewards import check_stages

        self.env, self.model = env, model
        self.shaping = shaping or ShapingConfig()
        self.shaping.validate()
        if not model.has_progress and self.shaping.mode != "progress":
            raise ConfigError(f"reward model {model.name!r} has no progress; use shaping mode=progress")
        space = getattr(env, "single_observation_space", None)
        keys = list(space.spaces) if space is not None and hasattr(space, "spaces") else None
        if keys is not None:
            missing = [k for k in model.config.obs_keys if k not in keys]
            if missing:
                cams = [k.rsplit(".", 1)[-1] for k in missing if k.startswith("observation.images.")]
                hint = f"; make the env with cameras={cams}" if cams else ""
                raise ConfigError(f"the reward model reads {', '.join(missing)}, which the env does not observe "
                                  f"(it has {', '.join(keys)}){hint}")
            for k in model.config.obs_keys:
                want = model.features[k].shape
                if tuple(space[k].shape) != tuple(want):
                    raise ConfigError(f"the env's {k!r} has shape {tuple(space[k].shape)}; the reward model was "
                                      f"trained on {tuple(want)} (set the env's image_size to match)")
        task = getattr(env, "task", None)
        if task is not None and getattr(task, "stages", None):
            check_stages(model, list(task.stages), f"task {getattr(task, 'name', type(task).__name__)!r}")
        self.num_envs = env.num_envs
        self.engine = InferenceEngine(model, num_envs=self.num_envs, device=device)
        self._phi = np.zeros(self.num_envs)
        self.steps = 0
        """steps taken since the wrapper was made (named in errors)"""

    def __getattr__(self, name):  # spaces, render, task, cfg, ... of the wrapped env
        if name in ("env", "model", "engine", "steps"):
            raise AttributeError(name)
        return getattr(self.env, name)

    def _potential(self, out: dict[str, np.ndarray]) -> np.ndarray:
        return self.shaping.scale * out["progress" if "progress" in out else "reward"].astype(np.float64)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Reset the env; with options["reset_mask"] (N,) bool only those envs restart (their histories
        and potentials too); the info's progress / learned_stage cover the envs that restarted."""
        obs, info = self.env.reset(seed=seed, options=options)
        mask = (options or {}).get("reset_mask")
        ids = np.arange(self.num_envs) if mask is None else np.flatnonzero(np.asarray(mask, bool))
        self.engine.reset(ids)
        out = self.engine.score({k: np.asarray(obs[k])[ids] for k in self.model.config.obs_keys}, env_ids=ids)
        self._phi[ids] = self._potential(out)
        self._check_finite({"progress": self._phi[ids]})
        info = dict(info)
        progress = np.full(self.num_envs, np.nan, np.float32)
        progress[ids] = out.get("progress", out["reward"])
        info["progress"] = progress
        if "stage" in out:
            stage = np.full(self.num_envs, -1, np.int64)
            stage[ids] = out["stage"]
            info["learned_stage"] = stage
        return obs, info

    def step(self, actions):
        obs, env_reward, terminated, truncated, info = self.env.step(actions)
        done = np.asarray(terminated, bool) | np.asarray(truncated, bool)
        keys = self.model.config.obs_keys
        ended = np.flatnonzero(done)
        out = self.engine.score(reached_obs(obs, info, keys, ended))
        phi_next = self._potential(out)
        sparse = sparse_reward(self.shaping, info, env_reward, ended, self.num_envs)
        terms = shaped_reward(self.shaping, sparse, self._phi, phi_next, terminated)
        progress = out.get("progress", out["reward"])
        self.steps += 1
        self._check_finite({"progress": progress, "sparse": terms["sparse"], "shaping": terms["shaping"]})
        self._phi = phi_next
        if len(ended):  # the next episodes start from their first observation
            self.engine.reset(ended)
            first = self.engine.score({k: np.asarray(obs[k])[ended] for k in keys}, env_ids=ended)
            self._phi[ended] = self._potential(first)
        info = dict(info)
        info["env_reward"] = env_reward
        info["reward_terms"] = {**info.get("reward_terms", {}), "learned/sparse": terms["sparse"],
                                "learned/shaping": terms["shaping"], "learned/total": terms["total"],
                                "learned/progress": progress.astype(np.float32)}
        info["progress"] = progress
        if "stage" in out:
            info["learned_stage"] = out["stage"]
        return obs, terms["total"], terminated, truncated, info

    def _check_finite(self, terms: dict[str, np.ndarray]) -> None:
        """Refuse to hand a NaN or infinite reward to a learner: it would poison every update after it."""
        for name, v in terms.items():
            bad = np.flatnonzero(~np.isfinite(np.asarray(v, np.float64)))
            if len(bad):
                raise RewardError(f"step {self.steps}: the learned reward's {name!r} term is {v[bad[0]]} for envs "
                                  f"{bad.tolist()[:8]}; the reward model ({self.model.name}) produced a non-finite "
                                  "value. Check its checkpoint (NaN weights?) and the env's observations")

    def close(self, **kwargs) -> None:
        self.env.close(**kwargs)
