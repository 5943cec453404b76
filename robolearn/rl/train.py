"""`robolearn train residual`: RL of a residual over a frozen BC base, with a learned or sparse reward.

    robolearn train residual --base runs/bc/peg_mlp --reward runs/reward/peg --algo ppo --out runs/residual/peg_ppo

The env is the one the base's dataset was recorded in (its checkpoint remembers it), with the cameras
the base and the reward model read. The stack, outermost first:

    VecMonitor(ResidualVecEnv(SB3VecEnv(RewardWrapper(VecEnv) | SuccessReward(VecEnv)), residual))

- `--reward DIR`: a progress model, shaped by `shaping` (potential-based by default, gamma tied to
  the algorithm's); `--reward sparse`: the task's success (1 on the step it succeeds) alone.
- PPO (ResiP's recipe): many envs, small action scale, low initial action std, the residual's output
  layer at zero. SAC (ResFiT's as far as SB3 goes): n-step returns (`NStepReplayBuffer`), a critic
  ensemble (`n_critics`), update-to-data ratio `utd` (gradient steps per env step).

Writes under `out/`: train_config.json; checkpoints/step_NNNNNNNN/ (a `ResidualPolicy` checkpoint that
`robolearn eval` takes, plus training_state.safetensors/.json: every network and optimizer of the
learner and the step count; nothing pickled) and checkpoints/last; tb/ (SB3's rollout and train
scalars, every reward term as reward/<term>, eval/success_rate); eval_log.jsonl. Rerunning the same
command resumes from checkpoints/last (learner weights and optimizers restored; envs start new
episodes; a SAC replay buffer is not kept, so SAC refills it before updating again).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from robolearn.data.format import atomic_write_json, to_jsonable
from robolearn.errors import ConfigError
from robolearn.rewards.shaping import ShapingConfig

RESUME_KEYS = ("base", "reward", "algo", "task", "num_envs", "scale", "dim_scales", "hidden", "seed", "ppo", "sac",
               "shaping")
STATE_VERSION = 1
FUSED_ADAM = {"fused": True}
"""Adam's fused kernel (one pass over all parameters instead of a loop of small ops per tensor): the
same update rule, ~8% off a PPO update on 2 CPU cores (bench/ppo_update.py: 80 minibatches of 512,
[256, 256] actor and critic, 1.09 -> 1.00 s)"""


@dataclass
class PPOOptions:
    """stable-baselines3 PPO settings (ResiP-style defaults)."""

    n_steps: int = 64
    """env steps per env between updates"""
    batch_size: int = 512
    """minibatch size"""
    n_epochs: int = 10
    """passes over each rollout"""
    learning_rate: float = 3e-4
    """Adam learning rate"""
    gamma: float = 0.99
    """discount (also the shaping's gamma)"""
    gae_lambda: float = 0.95
    """GAE lambda"""
    clip_range: float = 0.2
    """PPO clip"""
    ent_coef: float = 0.0
    """entropy bonus"""
    log_std_init: float = -1.0
    """initial log std of the residual's Gaussian (small: explore near the base)"""
    target_kl: float = 0.05
    """stop an update's epochs early past this KL (0: off)"""


@dataclass
class SACOptions:
    """stable-baselines3 SAC settings (ResFiT-style where SB3 allows)."""

    buffer_size: int = 200_000
    """replay buffer transitions"""
    learning_starts: int = 2000
    """env steps collected before the first update"""
    batch_size: int = 256
    """minibatch size"""
    utd: int = 2
    """gradient steps per env step of every env (update-to-data ratio)"""
    n_step: int = 3
    """n-step returns"""
    n_critics: int = 4
    """critic ensemble size (the target is their minimum)"""
    learning_rate: float = 3e-4
    """Adam learning rate of the critics and the entropy coefficient"""
    actor_learning_rate: float = 3e-5
    """Adam learning rate of the actor (the residual): slower than the critics, so that it does not
    outrun the replay data (at the critics' rate it left the base within 3k updates on lift)"""
    gamma: float = 0.99
    """discount (also the shaping's gamma)"""
    tau: float = 0.005
    """target network update rate"""
    demos: str = "base"
    """demonstrations mixed into every batch (ResFiT): base (the base's training dataset), a dataset
    directory, or none"""
    demo_fraction: float = 0.5
    """share of each minibatch drawn from the demonstrations (when there are some)"""
    critic_warmup: int = 1000
    """gradient steps that update only the critics before the actor moves (ResFiT's warm-up)"""
    ent_coef_init: float = 0.01
    """initial entropy coefficient (learned from there towards SB3's target entropy, -dim(action)).
    SB3's 1.0 makes the entropy bonus (~10 per step for 7 dims) outweigh a task reward of at most 1
    per episode: the critic learns entropy and the actor leaves the base"""
    log_std_init: float = -2.0
    """initial log std of the residual's Gaussian, the same in every state (std 0.14 before tanh: the
    first rollouts explore near the base)"""
    policy_delay: int = 2
    """critic updates per actor (and entropy coefficient) update, after the warm-up (TD3's delay)"""
    residual_penalty: float = 0.4
    """weight of the mean squared correction (tanh of the actor's mean) in the actor's loss, whose Q
    term is divided by its mean magnitude (TD3+BC's balance; 0.4 = their alpha of 2.5): the actor
    climbs the critic only where the gain beats moving away from the base. 0: plain SAC"""


@dataclass
class TrainResidualConfig:
    """What `robolearn train residual` trains."""

    base: str = ""
    """base policy checkpoint or run directory (`robolearn train bc`)"""
    reward: str = "sparse"
    """progress reward model checkpoint or run directory, code:PATH (a reward program, e.g. from
    `robolearn vlm reward-code`), or sparse (the task's success alone)"""
    algo: Literal["ppo", "sac"] = "ppo"
    """RL algorithm"""
    task: str = ""
    """task; empty: the one the base's dataset was recorded on"""
    out: str = ""
    """run directory; empty: runs/residual/<task>_<algo>"""
    num_envs: int = 16
    """environments stepped together"""
    num_threads: int = 2
    """physics threads"""
    total_steps: int = 200_000
    """env steps (all envs together)"""
    scale: float = 0.1
    """largest correction per action dimension (env action units)"""
    dim_scales: dict[str, float] = field(default_factory=lambda: {"gripper": 1.0})
    """per-dimension scales by action name overriding `scale` (default: the residual may overrule the
    base's gripper, which BC on imperfect demos learns to open too early, while it nudges the motion)"""
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """hidden layers of the residual (and of the critic)"""
    shaping: ShapingConfig = field(default_factory=ShapingConfig)
    """how progress becomes reward (with a reward model); shaping.gamma follows the algorithm's gamma"""
    ppo: PPOOptions = field(default_factory=PPOOptions)
    sac: SACOptions = field(default_factory=SACOptions)
    eval_every: int = 20_000
    """env steps between evaluations (0: only at the end)"""
    eval_episodes: int = 20
    """seeded episodes per evaluation (0: none)"""
    save_every: int = 20_000
    """env steps between checkpoints (and one at the end)"""
    seed: int = 0
    """seed of the envs and the learner"""
    device: str = "cpu"
    """learner and base device (small MLPs: the CPU is usually fastest)"""
    progress: bool = True
    """show a progress bar"""

    def validate(self) -> None:
        if not self.base:
            raise ConfigError("train residual: name the base policy, e.g. --base runs/bc/peg_mlp")
        if self.algo not in ("ppo", "sac"):
            raise ConfigError(f"train residual: algo={self.algo!r} must be ppo or sac")
        for name in ("num_envs", "total_steps", "save_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train residual: {name}={getattr(self, name)} must be at least 1")
        if not self.scale > 0:
            raise ConfigError(f"train residual: scale={self.scale} must be > 0")
        if self.sac.utd < 1 or self.sac.n_step < 1 or self.sac.n_critics < 1:
            raise ConfigError("train residual: sac.utd, sac.n_step and sac.n_critics must be at least 1")
        if not 0 <= self.sac.demo_fraction < 1:
            raise ConfigError(f"train residual: sac.demo_fraction={self.sac.demo_fraction} must be in [0, 1)")
        if self.sac.critic_warmup < 0:
            raise ConfigError(f"train residual: sac.critic_warmup={self.sac.critic_warmup} must be >= 0")
        if not (np.isfinite(self.sac.ent_coef_init) and self.sac.ent_coef_init > 0):
            raise ConfigError(f"train residual: sac.ent_coef_init={self.sac.ent_coef_init} must be > 0")
        if not (self.sac.learning_rate > 0 and self.sac.actor_learning_rate > 0):
            raise ConfigError("train residual: sac.learning_rate and sac.actor_learning_rate must be > 0")
        if self.sac.policy_delay < 1:
            raise ConfigError(f"train residual: sac.policy_delay={self.sac.policy_delay} must be at least 1")
        if not (np.isfinite(self.sac.residual_penalty) and self.sac.residual_penalty >= 0):
            raise ConfigError(f"train residual: sac.residual_penalty={self.sac.residual_penalty} must be >= 0 "
                              "(0: plain SAC)")
        if not np.isfinite(self.sac.log_std_init):
            raise ConfigError(f"train residual: sac.log_std_init={self.sac.log_std_init} must be a finite number")
        self.shaping.validate()


class SuccessReward:
    """The task's success as the only reward: 1 on the step an episode succeeds, else 0 (our vector
    interface; the env's own reward is kept in info["env_reward"])."""

    def __init__(self, env):
        self.env = env

    def __getattr__(self, name):
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)

    def reset(self, *, seed=None, options=None):
        return self.env.reset(seed=seed, options=options)

    def step(self, actions):
        obs, env_reward, terminated, truncated, info = self.env.step(actions)
        success = np.asarray(info["success"], np.float32)
        info = dict(info)
        info["env_reward"] = env_reward
        info["reward_terms"] = {**info.get("reward_terms", {}), "sparse/success": success}
        return obs, success, terminated, truncated, info

    def close(self, **kwargs) -> None:
        self.env.close(**kwargs)


def build_env(cfg: TrainResidualConfig, base, reward_model, num_envs: int, seed: int):
    """Our vector env for the base (+ reward model): the base's recorded env with the cameras both read."""
    from robolearn.eval.sim import policy_env_overrides, recorded_env
    from robolearn.policies.base import resolve_checkpoint
    from robolearn.sim.config import EnvConfig
    from robolearn.sim.registry import make_env

    env_cfg, source = recorded_env(resolve_checkpoint(cfg.base))
    if env_cfg is None and not cfg.task:
        raise ConfigError(f"train residual: name the task (--task NAME): {source}")
    task = cfg.task or env_cfg["task"]
    known = set(EnvConfig.__dataclass_fields__)
    settings = {k: v for k, v in (env_cfg or {}).items() if k in known and k != "task"} if (
        env_cfg and env_cfg.get("task") == task) else {}
    feats = dict(base.features)
    if reward_model is not None:
        feats.update(reward_model.features)
    need = policy_env_overrides(feats)
    settings.update(need)
    settings.update(num_envs=num_envs, num_threads=cfg.num_threads, seed=seed, terminate_on_success=True)
    return make_env(task, **settings), task


def demo_dataset(cfg: TrainResidualConfig, base) -> str | None:
    """The dataset SAC mixes into its batches (`sac.demos`), or None."""
    choice = cfg.sac.demos
    if cfg.algo != "sac" or choice in ("", "none"):
        return None
    if choice == "base":
        path = (base.metadata or {}).get("dataset")
        if not path or not Path(path).is_dir():
            raise ConfigError(f"train residual: sac.demos=base, but the base's training dataset ({path or 'unknown'}) "
                              "is not there; pass sac.demos=DIR (a dataset of the same task) or sac.demos=none")
        return str(path)
    if not Path(choice).is_dir():
        raise ConfigError(f"train residual: sac.demos={choice!r} is not a dataset directory (or base / none)")
    return choice


def ppo_learner(cfg: TrainResidualConfig, venv, tb_dir: Path | None = None, fused: bool = True):
    """The PPO learner of `cfg` on `venv` (ResiP's recipe, `cfg.ppo`): separate actor and critic MLPs of
    `cfg.hidden`, tanh, the residual's initial log std, and (`fused`) Adam's fused kernel (`FUSED_ADAM`)."""
    from robolearn.rl.algorithms import ResidualPPO

    p = cfg.ppo
    return ResidualPPO("MlpPolicy", venv, n_steps=p.n_steps, batch_size=p.batch_size, n_epochs=p.n_epochs,
                       learning_rate=p.learning_rate, gamma=p.gamma, gae_lambda=p.gae_lambda,
                       clip_range=p.clip_range, ent_coef=p.ent_coef, target_kl=p.target_kl or None,
                       seed=cfg.seed, device=cfg.device, tensorboard_log=str(tb_dir) if tb_dir else None, verbose=0,
                       policy_kwargs={"net_arch": {"pi": list(cfg.hidden), "vf": list(cfg.hidden)},
                                      "activation_fn": torch.nn.Tanh, "log_std_init": p.log_std_init,
                                      "optimizer_kwargs": dict(FUSED_ADAM) if fused else {}})


def _learner(cfg: TrainResidualConfig, venv, tb_dir: Path, demos=None):
    from robolearn.rl.algorithms import DemoReplayBuffer, LayerNormSACPolicy, ResidualSAC

    if cfg.algo == "ppo":
        model = ppo_learner(cfg, venv, tb_dir)
        out = model.policy.action_net
    else:
        s = cfg.sac
        model = ResidualSAC(LayerNormSACPolicy, venv, buffer_size=s.buffer_size, learning_starts=s.learning_starts,
                            batch_size=s.batch_size, gradient_steps=s.utd * venv.num_envs, train_freq=1,
                            learning_rate=s.learning_rate, gamma=s.gamma, tau=s.tau, seed=cfg.seed,
                            device=cfg.device, critic_warmup=s.critic_warmup, ent_coef=f"auto_{s.ent_coef_init}",
                            actor_lr_scale=s.actor_learning_rate / s.learning_rate,
                            policy_delay=s.policy_delay, residual_penalty=s.residual_penalty,
                            replay_buffer_class=DemoReplayBuffer,
                            replay_buffer_kwargs={"n_steps": s.n_step, "gamma": s.gamma, "demos": demos,
                                                  "demo_fraction": s.demo_fraction},
                            tensorboard_log=str(tb_dir), verbose=0,
                            policy_kwargs={"net_arch": list(cfg.hidden), "activation_fn": torch.nn.Tanh,
                                           "n_critics": s.n_critics, "optimizer_kwargs": dict(FUSED_ADAM)})
        out = model.actor.mu
        with torch.no_grad():  # one std everywhere at first (SB3 draws it from a random layer: std ~1)
            model.actor.log_std.weight.zero_()
            model.actor.log_std.bias.fill_(s.log_std_init)
    model.train_threads = cfg.num_threads  # updates take every core; rollouts leave them to the physics
    with torch.no_grad():  # the residual starts at zero: the first rollouts are the base's
        out.weight.zero_()
        out.bias.zero_()
    return model


def actor_layers(model, algo: str) -> list[torch.nn.Linear]:
    """The learner's actor as the residual's Linear layers, in order (hidden..., output)."""
    if algo == "ppo":
        hidden = [m for m in model.policy.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)]
        return hidden + [model.policy.action_net]
    hidden = [m for m in model.actor.latent_pi if isinstance(m, torch.nn.Linear)]
    return hidden + [model.actor.mu]


def export_residual(model, algo: str, policy) -> None:
    """Copy the learner's actor into `policy.residual` (deterministic action = scale * tanh(actor(x)))."""
    dst = [m for m in policy.residual if isinstance(m, torch.nn.Linear)]
    src = actor_layers(model, algo)
    if [tuple(m.weight.shape) for m in dst] != [tuple(m.weight.shape) for m in src]:
        raise ConfigError("the learner's actor does not have the residual's layer sizes")
    with torch.no_grad():
        for d, s in zip(dst, src):
            d.weight.copy_(s.weight.detach().to(d.weight.device))
            d.bias.copy_(s.bias.detach().to(d.bias.device))


def _save(out: Path, step: int, model, algo: str, policy) -> Path:
    """ResidualPolicy checkpoint + the learner's state (safetensors + json), written aside and renamed."""
    from safetensors.torch import save_file

    from robolearn.training import commit_checkpoint, flatten_optimizer

    ck = out / "checkpoints"
    final, tmp = ck / f"step_{step:08d}", ck / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    export_residual(model, algo, policy)
    policy.save(tmp)
    tensors, meta = {}, {"version": STATE_VERSION, "step": int(model.num_timesteps), "algo": algo, "optimizers": {},
                         "n_updates": int(model._n_updates)}
    for name, sd in model.get_parameters().items():
        if name.endswith("optimizer"):
            t, meta["optimizers"][name] = flatten_optimizer(sd, prefix=f"{name}.opt")
            tensors.update(t)
        else:
            tensors.update({f"{name}.{k}": v.detach().cpu().contiguous() for k, v in sd.items()})
    if algo == "sac" and getattr(model, "log_ent_coef", None) is not None:
        tensors["log_ent_coef"] = model.log_ent_coef.detach().cpu().reshape(1)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "training_state.safetensors"))
    atomic_write_json(tmp / "training_state.json", meta)
    commit_checkpoint(tmp, final)
    return final


def _restore(path: Path, model) -> int:
    from safetensors.torch import load_file

    from robolearn.training import unflatten_optimizer

    meta = json.loads((path / "training_state.json").read_text())
    if meta.get("version") != STATE_VERSION:
        raise ConfigError(f"{path}: training state version {meta.get('version')} is not {STATE_VERSION}; "
                          "restart the run in a new --out")
    tensors = load_file(str(path / "training_state.safetensors"))
    params = {}
    for name, sd in model.get_parameters().items():
        if name.endswith("optimizer"):
            params[name] = unflatten_optimizer(meta["optimizers"][name], tensors, prefix=f"{name}.opt")
        else:
            params[name] = {k: tensors[f"{name}.{k}"] for k in sd}
    model.set_parameters(params, exact_match=True, device=model.device)
    if "log_ent_coef" in tensors and getattr(model, "log_ent_coef", None) is not None:
        with torch.no_grad():
            model.log_ent_coef.copy_(tensors["log_ent_coef"].reshape(model.log_ent_coef.shape))
    model.num_timesteps = int(meta["step"])
    model._n_updates = int(meta.get("n_updates", 0))  # SAC's critic warm-up is not repeated on resume
    return int(meta["step"])


def _previous_train_wall(out: Path, start: int) -> float:
    """Training seconds of the run before a resume at `start` (from its last evaluation at or before it)."""
    path = out / "eval_log.jsonl"
    if not start or not path.exists():
        return 0.0
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r.get("step", 0) <= start and "train_wall_s" in r]
    return float(rows[-1]["train_wall_s"]) if rows else 0.0


class _Checkpoints:
    """Checkpoints of one run: a periodic save and an evaluation that fall on the same callback step
    share one write. `force` rewrites it: after `learn` returns, PPO has updated on the last rollout
    at the same step count."""

    def __init__(self, out: Path, algo: str, policy):
        self.out, self.algo, self.policy = out, algo, policy
        self.last: tuple[int, Path] | None = None

    def save(self, model, force: bool = False) -> Path:
        n = int(model.num_timesteps)
        if force or self.last is None or self.last[0] != n:
            self.last = (n, _save(self.out, n, model, self.algo, self.policy))
        return self.last[1]


def _callback(cfg: TrainResidualConfig, out: Path, checkpoints: _Checkpoints, start: int, bar, timing: dict):
    from stable_baselines3.common.callbacks import BaseCallback

    class Progress(BaseCallback):
        """Progress bar, reward terms as TensorBoard scalars, periodic evaluation and checkpoints."""

        def _on_training_start(self) -> None:
            self.t0 = time.perf_counter()  # timing["eval_s"]: evaluations, not training time
            self.sums: dict[str, float] = {}
            self.count = 0
            self.next_save = (start // cfg.save_every + 1) * cfg.save_every
            self.next_eval = (start // cfg.eval_every + 1) * cfg.eval_every if cfg.eval_every else None
            if start == 0 and cfg.eval_every:
                self._evaluate(0)  # the curve starts at the base: the residual's output is still zero

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                for k, v in (info.get("reward_terms") or {}).items():
                    self.sums[k] = self.sums.get(k, 0.0) + float(v)
                self.count += 1
            bar.update(self.training_env.num_envs)
            n = self.num_timesteps
            if n >= self.next_save:
                self.next_save += cfg.save_every
                checkpoints.save(self.model)
            if self.next_eval is not None and n >= self.next_eval:
                self.next_eval += cfg.eval_every
                self._evaluate(n)
            return True

        def _on_rollout_end(self) -> None:
            if self.count:
                for k, v in self.sums.items():
                    self.logger.record(f"reward/{k}", v / self.count)
                self.sums, self.count = {}, 0

        def _evaluate(self, n: int) -> None:
            if not cfg.eval_episodes:
                return
            t = time.perf_counter()
            ckpt = checkpoints.save(self.model)
            rate = evaluate(ckpt, cfg, out / "eval" / f"step_{n:08d}")
            timing["eval_s"] += time.perf_counter() - t
            train_s = time.perf_counter() - self.t0 - timing["eval_s"]
            self.logger.record("eval/success_rate", rate)
            with open(out / "eval_log.jsonl", "a") as f:
                f.write(json.dumps({"step": n, "success_rate": rate, "episodes": cfg.eval_episodes,
                                    "train_wall_s": round(train_s + timing["before_s"], 2)}) + "\n")
            bar.set_postfix(success=f"{rate:.2f}")

    return Progress()


def evaluate(ckpt: Path, cfg: TrainResidualConfig, out: Path, episodes: int | None = None) -> float:
    """Success rate of a residual checkpoint over seeded episodes (`robolearn eval`)."""
    from robolearn.eval.sim import EvalConfig
    from robolearn.eval.sim import run as run_eval

    res = run_eval(EvalConfig(policy=str(ckpt), task=cfg.task, episodes=episodes or cfg.eval_episodes,
                              device=cfg.device, out=str(out), progress=False, num_threads=cfg.num_threads))
    return float(res["success_rate"])


def run(cfg: TrainResidualConfig) -> Path:
    """Train (or resume) a residual and return the run directory."""
    from robolearn.training import torch_threads

    cfg.validate()
    with torch_threads(1):  # rollouts: the physics threads own the cores (updates take them back)
        return _run(cfg)


def _run(cfg: TrainResidualConfig) -> Path:
    from stable_baselines3.common.vec_env import VecMonitor
    from tqdm import tqdm

    from robolearn.config import config_to_dict
    from robolearn.policies import load_policy
    from robolearn.rewards import load_reward_model
    from robolearn.rewards.code import CodeReward, CodeRewardWrapper, parse_code_reward
    from robolearn.rewards.wrapper import RewardWrapper
    from robolearn.rl.residual import ResidualPolicy
    from robolearn.rl.wrappers import ResidualVecEnv
    from robolearn.sim.sb3 import SB3VecEnv
    from robolearn.training import prepare_run_dir

    base = load_policy(cfg.base, cfg.device)
    if isinstance(base, ResidualPolicy):
        raise ConfigError(f"train residual: {cfg.base} is already a residual policy; pass its BC base")
    code_path = parse_code_reward(cfg.reward)
    if code_path is not None and cfg.algo == "sac" and cfg.sac.demos not in ("", "none"):
        raise ConfigError("train residual: SAC's demonstrations are scored by a reward model, not by reward code; "
                          "pass sac.demos=none with --reward code:PATH")
    reward_model = None if cfg.reward == "sparse" or code_path else load_reward_model(cfg.reward, cfg.device)
    gamma = cfg.ppo.gamma if cfg.algo == "ppo" else cfg.sac.gamma
    cfg.shaping.gamma = gamma  # policy invariance needs the learner's discount
    env, task = build_env(cfg, base, reward_model, cfg.num_envs, cfg.seed)
    cfg.task = task
    out = Path(cfg.out or f"runs/residual/{task}_{cfg.algo}")
    wrapped = None
    try:
        from robolearn.eval.sim import _check_fit

        other = "sac" if cfg.algo == "ppo" else "ppo"  # the other learner's options do not matter to this run
        state = prepare_run_dir(out, to_jsonable(config_to_dict(cfg)), tuple(k for k in RESUME_KEYS if k != other))

        _check_fit(base, env)
        sp = env.single_action_space
        policy = ResidualPolicy.from_base(base, action_low=sp.low, action_high=sp.high, scale=cfg.scale,
                                          dim_scales=dict(cfg.dim_scales), hidden=list(cfg.hidden),
                                          activation="tanh")
        policy.metadata = {**base.metadata, "residual": {"algo": cfg.algo, "reward": cfg.reward, "run": str(out)}}
        if code_path is not None:
            from robolearn.data.collect import dataset_features

            wrapped = CodeRewardWrapper(env, CodeReward.from_file(code_path, dataset_features(env)), cfg.shaping)
        elif reward_model is not None:
            wrapped = RewardWrapper(env, reward_model, cfg.shaping, device=cfg.device)
        else:
            wrapped = SuccessReward(env)
        venv = VecMonitor(ResidualVecEnv(SB3VecEnv(wrapped), policy, squash=cfg.algo == "ppo", device=cfg.device))
        venv.seed(cfg.seed)
        demos = None
        source = demo_dataset(cfg, base)
        if source is not None:
            from robolearn.rl.demos import demo_transitions

            demos = demo_transitions(policy, source, reward_model, cfg.shaping, device=cfg.device,
                                     progress=cfg.progress)
            print(f"demonstrations: {len(demos)} transitions of {demos.episodes} episodes from {source} "
                  f"({demos.clipped_fraction:.0%} of steps depart from the base by more than scale={cfg.scale})")
        model = _learner(cfg, venv, out / "tb", demos)
        start = _restore(state, model) if state is not None else 0
        if start:
            print(f"resuming {out} from step {start}")
        bar = tqdm(total=cfg.total_steps, initial=min(start, cfg.total_steps), unit="step",
                   desc=f"residual {cfg.algo}", disable=not cfg.progress)
        t0 = time.perf_counter()
        checkpoints = _Checkpoints(out, cfg.algo, policy)
        # training wall-clock before this session (a resumed run's curve keeps counting from there)
        timing = {"eval_s": 0.0, "before_s": _previous_train_wall(out, start)}
        if start < cfg.total_steps:
            model.learn(cfg.total_steps - start, callback=_callback(cfg, out, checkpoints, start, bar, timing),
                        reset_num_timesteps=start == 0, tb_log_name="sb3",
                        log_interval=1)  # PPO: every rollout; SAC: every episode end
        bar.close()
        final = checkpoints.save(model, force=True)
        wall = time.perf_counter() - t0
        learn_s = max(wall - timing["eval_s"], 1e-9)
        summary = {"steps": int(model.num_timesteps), "resumed_from": start, "wall_time_s": wall,
                   "train_wall_s": learn_s + timing["before_s"],
                   "env_steps_per_s": (int(model.num_timesteps) - start) / learn_s}
        old = out / "train_summary.json"
        if start >= cfg.total_steps and old.exists():  # nothing trained now: keep the run's own figures
            before = json.loads(old.read_text())
            for k in ("train_wall_s", "env_steps_per_s"):
                if k in before:
                    summary[k] = before[k]
        if cfg.eval_episodes:
            summary["success_rate"] = evaluate(final, cfg, out / "eval" / "final")
        atomic_write_json(out / "train_summary.json", summary)
    finally:
        if code_path is not None and isinstance(wrapped, CodeRewardWrapper):
            wrapped.code.close()  # the sandbox's worker process
        env.close()
    return out
