"""Diffusion Policy: shapes for state and camera observations, the DDPM/DDIM scheduler against an
oracle, the CPU convolution paths against torch's, learning a tiny problem, checkpoints, padding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from robolearn.data import DatasetReader, DatasetWriter, EpisodeRecord, Feature
from robolearn.data.windows import WindowDataset
from robolearn.errors import ConfigError
from robolearn.inference.engine import InferenceEngine
from robolearn.policies import CheckpointError, load_policy, make_policy
from robolearn.policies.diffusion import DiffusionConfig, DiffusionPolicy
from robolearn.policies.diffusion.modeling import Conv1d, Upsample1d, crop_images, mish
from robolearn.policies.diffusion.scheduler import DiffusionScheduler
from robolearn.training import torch_threads

D_S, D_A, H = 3, 2, 8
TINY = {"down_dims": [16, 32], "horizon": H, "n_action_steps": 4, "diffusion_step_embed_dim": 16, "n_groups": 4,
        "image_feature_dim": 8}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is as fast, and does not stall on OpenMP barriers when the
    other cores are busy (shared test machines)."""
    with torch_threads(1):
        yield


def _features(cams: int = 0, side: int = 16, d_s: int = D_S) -> dict[str, Feature]:
    feats = {"observation.state": Feature("float32", (d_s,))}
    for i in range(cams):
        feats[f"observation.images.cam{i}"] = Feature("video", (side, side, 3))
    feats["action"] = Feature("float32", (D_A,))
    return feats


def _stats(d_s: int = D_S) -> dict:
    return {"observation.state": {"mean": np.zeros(d_s), "std": np.ones(d_s), "min": -np.ones(d_s),
                                  "max": np.ones(d_s)},
            "action": {"mean": np.zeros(D_A), "std": np.ones(D_A), "min": -2 * np.ones(D_A), "max": 2 * np.ones(D_A)}}


def _policy(cams: int = 0, side: int = 16, **opts) -> DiffusionPolicy:
    return make_policy("diffusion", _features(cams, side), _stats(), {**TINY, **opts})


def _obs(policy: DiffusionPolicy, b: int, history: bool = True) -> dict[str, torch.Tensor]:
    t = (b, policy.config.n_obs_steps) if history else (b,)
    obs = {"observation.state": torch.randn(*t, D_S)}
    for k in policy.image_keys:
        obs[k] = torch.rand(*t, 3, *policy._shape(k)[1:])
    return obs


@pytest.mark.parametrize("cams, side, opts", [
    (0, 16, {}),
    (2, 16, {"image_encoder": "spatial_softmax"}),
    (2, 32, {"image_encoder": "group_norm_pool", "shared_image_encoder": True, "use_film": False}),
])
def test_chunk_and_action_shapes(cams, side, opts):
    torch.manual_seed(0)
    policy = _policy(cams, side, **opts).eval()
    obs = _obs(policy, 3)
    with torch.no_grad():
        assert policy.forward_chunk(policy.normalize_obs(obs)).shape == (3, H, D_A)
        chunk = policy.predict_action_chunk(obs)
    assert chunk.shape == (3, H, D_A) and torch.isfinite(chunk).all()
    assert chunk.abs().max() <= 2 + 1e-5  # clip_sample keeps normalized actions in [-1, 1]: the action range
    for _ in range(6):  # one env tick at a time: cameras as the env gives them, (B, H, W, 3) uint8
        tick = {"observation.state": np.random.randn(3, D_S).astype(np.float32)}
        for k in policy.image_keys:
            tick[k] = np.random.randint(0, 256, (3, side, side, 3), np.uint8)
        assert policy.select_action(tick).shape == (3, D_A)
    policy.reset([1])


def test_separate_or_shared_camera_encoders():
    separate, shared = _policy(2), _policy(2, shared_image_encoder=True)
    assert len(separate.obs_encoder.cameras) == 2 and len(shared.obs_encoder.cameras) == 1
    assert separate.obs_encoder.step_dim == D_S + 2 * TINY["image_feature_dim"] == shared.obs_encoder.step_dim


def test_crops_random_in_training_center_at_inference():
    x = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).view(2, 3, 10, 10)
    center = crop_images(x, (8, 8), random=False)
    assert torch.equal(center, x[:, :, 1:9, 1:9])
    torch.manual_seed(0)
    crops = crop_images(x.repeat(16, 1, 1, 1), (8, 8), random=True)
    assert crops.shape == (32, 3, 8, 8)
    for img, c in zip(x.repeat(16, 1, 1, 1), crops):  # each is a window of its own image
        top, left = divmod(int((c[0, 0, 0] - img[0, 0, 0]).item()), 10)
        assert torch.equal(c, img[:, top:top + 8, left:left + 8])
    assert len({int(c[0, 0, 0]) for c in crops[::2]}) > 1  # not one crop for the whole batch
    assert crop_images(x, (10, 10), random=True) is x  # crop_ratio 1.0: off


def test_scheduler_tables():
    s = DiffusionScheduler(100, 10)
    abar = s.alphas_cumprod
    assert (abar[1:] < abar[:-1]).all() and 0 < abar[-1] < 1e-5 and abar[0] > 0.99
    assert (s.betas <= 0.999).all() and (s.betas > 0).all()
    assert s.timesteps.tolist() == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]  # trailing: starts at pure noise
    assert s.prev_timesteps.tolist() == [89, 79, 69, 59, 49, 39, 29, 19, 9, -1]
    s.set_timesteps(100)
    assert s.timesteps.tolist() == list(range(99, -1, -1))
    lin = DiffusionScheduler(100, 10, beta_schedule="linear")
    assert torch.allclose(lin.betas[[0, -1]], torch.tensor([1e-4, 0.02]))
    with pytest.raises(ConfigError):
        s.set_timesteps(101)


@pytest.mark.parametrize("steps", [1, 10, 100])
def test_ddim_with_an_oracle_epsilon_returns_the_sample(steps):
    """An exact noise prediction makes DDIM land on the clean sample, from any table; started from
    x_99 = add_noise(x0, noise, 99), every intermediate x_t is x0 noised to t with that same noise."""
    s = DiffusionScheduler(100, steps)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, H, D_A, generator=gen, dtype=torch.float64) * 2 - 1
    noise = torch.randn(4, H, D_A, generator=gen, dtype=torch.float64)
    abar = torch.from_numpy(s._abar)
    path = []

    def oracle(x_t, k):
        path.append(x_t)
        a = abar[int(s.timesteps[k])]
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    t = s.timesteps
    ref = abar[t].sqrt()[:, None, None, None] * x0 + (1 - abar[t]).sqrt()[:, None, None, None] * noise
    out = s.sample(ref[0], oracle)
    assert torch.allclose(out, x0, atol=1e-9)
    assert torch.allclose(torch.stack(path), ref, atol=1e-9)
    if steps == 100:
        # DDPM's posterior mean from the same x_t has the same x0 coefficient (sqrt(abar_{t-1})) and
        # ends at the same sample at t = 0
        betas = torch.from_numpy(1 - s._abar / np.concatenate([[1.0], s._abar[:-1]]))
        x = noise
        for t in range(99, -1, -1):
            a, a_prev = abar[t], (abar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64))
            c0, ct = a_prev.sqrt() * betas[t] / (1 - a), (1 - betas[t]).sqrt() * (1 - a_prev) / (1 - a)
            assert torch.isclose(c0 + ct * a.sqrt(), a_prev.sqrt())
            x = c0 * x0 + ct * x
        assert torch.allclose(x, x0, atol=1e-9)


def test_add_noise_matches_the_forward_process():
    s = DiffusionScheduler(100, 10)
    x0, noise, t = torch.randn(5, H, D_A), torch.randn(5, H, D_A), torch.tensor([0, 10, 50, 98, 99])
    a = s.alphas_cumprod[t][:, None, None]
    assert torch.allclose(s.add_noise(x0, noise, t), a.sqrt() * x0 + (1 - a).sqrt() * noise)


@pytest.mark.parametrize("batch", [1, 40])
def test_fast_convolutions_match_torch(batch):
    torch.manual_seed(0)
    for args in ((64, 128, 5, 1, 2), (128, 128, 3, 2, 1), (512, 128, 1), (8, 16, 5, 1, 2)):  # im2col, 1x1, torch's
        conv = Conv1d(*args)
        assert conv.im2col or conv.pointwise or args[0] == 8
        x = torch.randn(batch, conv.in_channels, 8, requires_grad=True)
        ours, ref = conv(x), nn.Conv1d.forward(conv, x)
        assert torch.allclose(ours, ref, atol=1e-4)
        g_ours, = torch.autograd.grad(ours.square().sum(), x)
        g_ref, = torch.autograd.grad(ref.square().sum(), x)
        assert torch.allclose(g_ours, g_ref, atol=1e-3)
    up = nn.ConvTranspose1d(6, 5, 4, 2, 1)
    x = torch.randn(batch, 6, 4)
    assert torch.allclose(Upsample1d.from_conv_transpose(up)(x), up(x), atol=1e-5)


def test_fast_mish_matches_torch():
    x = torch.linspace(-30, 30, 20001, requires_grad=True)  # large enough for the sigmoid identity
    ours, ref = mish(x), torch.nn.functional.mish(x)
    assert torch.allclose(ours, ref, atol=1e-5)
    g_ours, = torch.autograd.grad(ours.sum(), x)
    g_ref, = torch.autograd.grad(ref.sum(), x)
    assert torch.allclose(g_ours, g_ref, atol=1e-5)


def test_training_learns_a_tiny_problem():
    """4 states, each with its own sine-shaped chunk; 300 Adam steps (one-cycle lr 1e-2, batch 32).
    Observed: median per-sample error 0.02-0.06, mean 0.07-0.16 (targets: mean |a| 0.85, range
    [-1.5, 1.5], action bounds [-2, 2]); an untrained policy is off by ~1."""
    torch.manual_seed(0)
    policy = _policy()
    states = torch.randn(4, D_S)
    phase = torch.rand(4, D_A) * 6.28
    targets = 1.5 * torch.sin(2 * torch.linspace(0, 1, H)[None, :, None] + phase[:, None, :])  # (4, H, D_A)
    obs = {"observation.state": states[:, None].expand(4, 2, D_S).repeat(8, 1, 1)}

    def error() -> torch.Tensor:
        policy.eval()
        with torch.no_grad():
            err = (policy.predict_action_chunk(obs) - targets.repeat(8, 1, 1)).abs().mean(dim=(1, 2))
        policy.train()
        return err

    assert error().mean() > 0.5
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=300, pct_start=0.1)
    for _ in range(300):
        i = torch.randint(0, 4, (32,))
        batch = {"observation.state": states[i, None].expand(32, 2, D_S), "action": targets[i],
                 "action_is_pad": torch.zeros(32, H, dtype=torch.bool)}
        loss, info = policy.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert info["loss"] < 0.05
    err = error()
    assert err.median() < 0.15 and err.mean() < 0.3, err


def test_save_load_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    policy = _policy(1, num_inference_steps=5).eval()
    obs = _obs(policy, 2)
    torch.manual_seed(7)
    before = policy.predict_action_chunk(obs)
    loaded = load_policy(policy.save(tmp_path / "ckpt"))
    assert isinstance(loaded, DiffusionPolicy) and loaded.config == policy.config
    assert loaded.scheduler.timesteps.tolist() == policy.scheduler.timesteps.tolist()
    torch.manual_seed(7)
    assert torch.equal(loaded.predict_action_chunk(obs), before)
    torch.manual_seed(8)
    assert not torch.equal(loaded.predict_action_chunk(obs), before)  # the noise comes from torch's RNG


def test_checkpoint_that_does_not_fit_is_refused(tmp_path):
    path = _policy().save(tmp_path / "ckpt")
    raw = json.loads((path / "config.json").read_text())
    # another state dimension (features and stats agree with each other, not with the weights)
    bad = json.loads(json.dumps(raw))
    bad["features"]["observation.state"]["shape"] = [D_S + 1]
    (path / "config.json").write_text(json.dumps(bad))
    (path / "stats.json").write_text(json.dumps({k: {s: np.asarray(v).tolist() for s, v in d.items()}
                                                 for k, d in _stats(D_S + 1).items()}))
    with pytest.raises(CheckpointError, match="shape"):
        load_policy(path)
    # another architecture than the weights were trained with
    path = _policy().save(tmp_path / "ckpt2")
    bad = json.loads((path / "config.json").read_text())
    bad["config"]["down_dims"] = [16, 32, 64]
    (path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError):
        load_policy(path)


def test_padded_actions_do_not_contribute_to_the_loss():
    torch.manual_seed(0)
    policy = _policy()
    captured = {}

    def keep_output(module, args, out):
        out.retain_grad()
        captured["eps"] = out

    policy.unet.register_forward_hook(keep_output)
    obs = policy.normalize_obs(_obs(policy, 4))
    actions = torch.rand(4, H, D_A) * 2 - 1
    pad = torch.zeros(4, H, dtype=torch.bool)
    pad[:, 5:] = True
    pad[3] = True
    loss, _ = policy.compute_loss(obs, actions, pad)
    loss.backward()
    grad = captured["eps"].grad
    assert (grad[pad] == 0).all() and (grad[~pad] != 0).all()
    loss, _ = policy.compute_loss(obs, actions, torch.ones(4, H, dtype=torch.bool))
    assert loss.item() == 0.0


def test_image_training_step_reaches_the_camera_encoders():
    torch.manual_seed(0)
    policy = _policy(2, side=16)
    batch = {**_obs(policy, 4), "action": torch.rand(4, H, D_A), "action_is_pad": torch.zeros(4, H, dtype=torch.bool)}
    loss, _ = policy.training_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    for enc in policy.obs_encoder.cameras:
        assert enc.out.weight.grad is not None and enc.out.weight.grad.abs().sum() > 0


def test_from_a_recorded_dataset_to_the_inference_engine(tmp_path):
    """Windows of a LeRobot-layout dataset (state + camera, Diffusion Policy's action_offset -1) train
    it; the checkpoint runs in the InferenceEngine on env-shaped observations."""
    rng = np.random.default_rng(0)
    feats = _features(1)
    with DatasetWriter.create(tmp_path / "ds", feats, fps=10) as w:
        for _ in range(2):
            w.add_episode({"observation.state": rng.normal(size=(12, D_S)).astype(np.float32),
                           "observation.images.cam0": rng.integers(0, 256, (12, 16, 16, 3), np.uint8),
                           "action": rng.normal(size=(12, D_A)).astype(np.float32)}, EpisodeRecord(task="t"))
    reader = DatasetReader(tmp_path / "ds")
    torch.manual_seed(0)
    policy = make_policy("diffusion", reader.features, reader.meta.stats, TINY)
    assert policy.config.obs_keys == ["observation.state", "observation.images.cam0"]
    windows = WindowDataset(reader, policy.config.n_obs_steps, policy.config.horizon, policy.config.action_offset,
                            obs_keys=policy.config.obs_keys)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    for batch in windows.loader(batch_size=8, seed=0):
        loss, _ = policy.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    engine = InferenceEngine(load_policy(policy.save(tmp_path / "ckpt")), num_envs=2, device="cpu")
    for _ in range(5):
        act = engine.act({"observation.state": rng.normal(size=(2, D_S)).astype(np.float32),
                          "observation.images.cam0": rng.integers(0, 256, (2, 16, 16, 3), np.uint8)})
        assert act.shape == (2, D_A) and np.isfinite(act).all()


@pytest.mark.parametrize("opts", [
    {"horizon": 9},  # 2 levels halve the time axis once: horizon must be even
    {"image_encoder": "resnet18"},
    {"beta_schedule": "cosine"},
    {"num_inference_steps": 0},
    {"num_inference_steps": 101},
    {"n_groups": 5},
    {"kernel_size": 4},
    {"crop_ratio": 0.0},
])
def test_bad_config_is_refused(opts):
    with pytest.raises(ConfigError):
        _policy(**opts)


def test_defaults_follow_chi_et_al():
    cfg = DiffusionConfig()
    assert (cfg.n_obs_steps, cfg.horizon, cfg.n_action_steps, cfg.action_offset) == (2, 16, 8, -1)
    assert (cfg.num_train_timesteps, cfg.num_inference_steps, cfg.beta_schedule) == (100, 10, "squaredcos_cap_v2")
    with pytest.raises(ConfigError, match="observation"):
        make_policy("diffusion", {"action": Feature("float32", (D_A,))}, _stats(), TINY)
