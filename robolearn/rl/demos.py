"""Demonstrations as residual-RL transitions (for `DemoReplayBuffer`, ResFiT's offline data).

For every episode of a dataset recorded on the base's task: the base runs over the recorded
observations exactly as it runs online (its own observation history and chunk queue per episode,
all episodes in one batch), the residual's input is built from each frame and the base's action
(`ResidualPolicy.residual_input`), the demonstrated action becomes the correction
`clip((a_demo - a_base) / scale, -1, 1)`, and the reward is the one the online envs give: the task's
success, or the progress model's output shaped as `RewardWrapper` shapes it (scored offline with
`score_episodes`, which matches the live scores frame for frame).

Episodes end where they first succeed (a terminal transition, as with terminate_on_success); an
episode that never succeeds loses its last frame (the dataset holds no state after its last action)
and its last kept transition is a time-out, bootstrapped from the state it reached.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robolearn.errors import ConfigError
from robolearn.rl.algorithms import DemoTransitions


def _check_features(reader, policy, keys: list[str], what: str) -> None:
    for k in keys:
        if k not in reader.features:
            raise ConfigError(f"{reader.root}: the demonstrations have no {k!r}, which {what} reads; record them "
                              "on the base's task (robolearn collect) or pass sac.demos=none")
        want = policy.features.get(k)
        got = reader.features[k]
        if want is not None and tuple(got.shape) != tuple(want.shape):
            raise ConfigError(f"{reader.root}: feature {k!r} has shape {tuple(got.shape)} in the demonstrations but "
                              f"{tuple(want.shape)} for {what}; they come from another task or robot")


def base_actions(policy, episodes: list[dict[str, np.ndarray]], batch: int = 256) -> list[np.ndarray]:
    """The base's action at every frame of each episode ({key: (T, ...)}), run as online: one
    `ChunkRunner` env per episode, `batch` episodes at a time -> [(T, D_a)]."""
    from robolearn.inference.queues import ChunkRunner

    base = policy.base
    keys = list(base.config.obs_keys)
    out: list[np.ndarray] = []
    for lo in range(0, len(episodes), batch):
        group = episodes[lo:lo + batch]
        lengths = np.array([len(ep["action"]) for ep in group])
        runner = ChunkRunner(base, len(group), device=next(base.parameters()).device)
        acts = [np.zeros((n, policy.action_dim), np.float32) for n in lengths]
        for t in range(int(lengths.max())):
            idx = np.minimum(t, lengths - 1)  # finished episodes repeat their last frame (their actions unused)
            obs = {k: np.stack([ep[k][i] for ep, i in zip(group, idx)]) for k in keys}
            a = np.asarray(runner._step(obs))
            for j in np.flatnonzero(t < lengths):
                acts[j][t] = a[j]
        out += acts
    return out


def demo_transitions(policy, dataset: str | Path, reward_model=None, shaping=None, episodes=None,
                     device: str = "cpu", progress: bool = False) -> DemoTransitions:
    """A dataset's episodes as transitions of the residual learner (module docstring).

    policy: the `ResidualPolicy` being trained (its base, scale, bounds and residual inputs);
    reward_model + shaping: the learned reward as `RewardWrapper` gives it (None: the sparse success)."""
    from tqdm import tqdm

    from robolearn.data.dataset import DatasetReader
    from robolearn.rewards.shaping import shaped_reward

    reader = DatasetReader(dataset)
    keys = list(dict.fromkeys(list(policy.base.config.obs_keys) + list(policy.config.residual_keys)))
    _check_features(reader, policy, keys, "the base policy")
    if "action" not in reader.features or tuple(reader.features["action"].shape) != (policy.action_dim,):
        raise ConfigError(f"{reader.root}: the demonstrations' action is "
                          f"{reader.features.get('action') and tuple(reader.features['action'].shape)}, the base "
                          f"acts with ({policy.action_dim},); they come from another task or action mode")
    eps = list(range(reader.num_episodes)) if episodes is None else [int(e) for e in episodes]
    extra = [k for k in ("next.success", "next.reward") if k in reader.features]
    raw = [reader.episode(e, keys + ["action"] + extra)
           for e in tqdm(eps, desc="load demos", unit="ep", disable=not progress, leave=False)]
    cut = []
    for ep, data in zip(eps, raw):
        succ = np.asarray(data.get("next.success", np.zeros(len(data["action"]))), bool).reshape(-1)
        first = np.flatnonzero(succ)
        n = int(first[0]) + 1 if len(first) else len(succ)
        cut.append({k: v[:n] for k, v in data.items()} | {"_success": bool(len(first)), "_episode": ep})
    cut = [c for c in cut if len(c["action"]) >= (1 if c["_success"] else 2)]
    if not cut:
        raise ConfigError(f"{reader.root}: no demonstration episode is long enough to give a transition")

    dev = next(policy.parameters()).device
    bases = base_actions(policy, cut)
    phis = None
    if reward_model is not None:
        from robolearn.inference.reward import score_episodes
        from robolearn.rewards.frames import EpisodeFrames

        need = list(reward_model.config.obs_keys)
        _check_features(reader, reward_model, need, "the reward model")
        table = EpisodeFrames(reader, need, [c["_episode"] for c in cut])
        scores = score_episodes(reward_model, table, device=device)
        phis = [shaping.scale * s.get("progress", s.get("reward")).astype(np.float64)[:len(c["action"])]
                for s, c in zip(scores, cut)]

    obs, nxt, act, rew, done, tout = [], [], [], [], [], []
    terms: dict[str, list[np.ndarray]] = {}
    clipped = total = 0
    for i, (c, base) in enumerate(zip(cut, bases)):
        n = len(c["action"])
        with torch.inference_mode():
            now = {k: torch.as_tensor(np.asarray(c[k], np.float32), device=dev) for k in policy.config.residual_keys}
            x = policy.residual_input(now, torch.as_tensor(base, device=dev)).cpu().numpy().astype(np.float32)
        m = n if c["_success"] else n - 1  # transitions kept
        u = (np.asarray(c["action"], np.float32) - base) / policy.scales.cpu().numpy()
        over = np.abs(u) > 1.0 + 1e-6
        clipped += int(over[:m].any(axis=1).sum())
        total += m
        obs.append(x[:m])
        nxt.append(np.concatenate([x[1:], x[-1:]])[:m])  # a success's last next-state is terminal (unused)
        act.append(np.clip(u, -1.0, 1.0)[:m])
        d = np.zeros(m, np.float32)
        to = np.zeros(m, np.float32)
        if c["_success"]:
            d[-1] = 1.0
        else:
            to[-1] = 1.0
        done.append(d)
        tout.append(to)
        succ = d.astype(np.float64)  # success: 1 on the step that succeeded, which is the terminal one
        if reward_model is None:
            r = succ.astype(np.float32)
            terms.setdefault("sparse/success", []).append(r)
        else:
            phi = phis[i]
            phi_next = np.concatenate([phi[1:], phi[-1:]])[:m]
            if shaping.sparse == "success":
                sparse = succ
            elif shaping.sparse == "env":
                sparse = np.asarray(c.get("next.reward", np.zeros(n)), np.float64).reshape(-1)[:m]
            else:
                sparse = np.zeros(m)
            t = shaped_reward(shaping, sparse, phi[:m], phi_next, d.astype(bool))
            r = t["total"]
            for k in ("sparse", "shaping", "total"):
                terms.setdefault(f"learned/{k}", []).append(t[k])
        rew.append(np.asarray(r, np.float32))
    cat = np.concatenate
    out = DemoTransitions(observations=cat(obs), actions=cat(act).astype(np.float32), next_observations=cat(nxt),
                          rewards=cat(rew), dones=cat(done), timeouts=cat(tout), episodes=len(cut),
                          clipped_fraction=clipped / max(total, 1),
                          reward_terms={k: float(cat(v).mean()) for k, v in terms.items()})
    bad = ~np.isfinite(out.rewards)
    if bad.any() or not np.isfinite(out.observations).all():
        raise ConfigError(f"{reader.root}: the demonstrations give non-finite {'rewards' if bad.any() else 'inputs'} "
                          "(NaN in the dataset or the reward model); fix the dataset or pass sac.demos=none")
    return out
