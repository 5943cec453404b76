"""ChunkRunner and InferenceEngine behaviour on a stub policy whose chunks the test controls: queues
(a chunk every n_action_steps ticks per env, envs reset at different times), histories, ACT temporal
ensembling against a hand-computed average, camera conversion and every refused observation.

Every runner test runs twice: with numpy buffers (what a CPU device gets) and with tensor buffers (what
a GPU gets; forced on the CPU here by emptying `queues._HOST_DEVICES`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from robolearn.data import Feature
from robolearn.errors import ConfigError
from robolearn.inference import ChunkRunner, InferenceEngine, queues
from robolearn.inference.queues import history_predictor
from robolearn.policies import ObservationError, Policy, PolicyConfig, make_policy

FEATURES = {
    "observation.state": Feature("float32", (3,)),
    "observation.environment_state": Feature("float32", (2,)),
    "action": Feature("float32", (2,)),
}
CAMERA = {"observation.images.cam": Feature("video", (4, 5, 3))}
# mean 0 / std 1 and min -1 / max 1: normalization is the identity, so chunks come back as the stub made them
STATS = {k: {"mean": np.zeros(f.shape), "std": np.ones(f.shape), "min": -np.ones(f.shape), "max": np.ones(f.shape)}
         for k, f in FEATURES.items()}


class StubPolicy(Policy):
    """Chunks the test controls: the chunk predicted from a history whose newest state is [t, env, 0] is
    `table[t, env]` (horizon, 2) when a table is given, else action i = [t, i]. Records each history."""

    name = "stub"
    config_class = PolicyConfig

    def __init__(self, config: PolicyConfig, cameras: bool = False, table: np.ndarray | None = None):
        super().__init__(config, {**FEATURES, **(CAMERA if cameras else {})}, STATS)
        self.anchor = nn.Parameter(torch.zeros(()))  # the runner finds its device from the parameters
        self.table = None if table is None else torch.as_tensor(table, dtype=torch.float32)
        self.calls: list[dict[str, torch.Tensor]] = []

    def forward_chunk(self, obs):
        self.calls.append({k: v.clone() for k, v in obs.items()})
        newest = obs["observation.state"][:, -1]
        t, env = newest[:, 0].long(), newest[:, 1].long()
        if self.table is not None:
            return self.table[t, env]
        chunk = torch.zeros(len(t), self.config.horizon, 2)
        chunk[:, :, 0] = t[:, None].float()
        chunk[:, :, 1] = torch.arange(self.config.horizon, dtype=torch.float32)
        return chunk

    def compute_loss(self, obs, actions, action_is_pad):
        raise NotImplementedError


def stub(n_obs_steps=2, horizon=5, n_action_steps=3, action_offset=0, temporal_ensemble=0.0, **kw) -> StubPolicy:
    return StubPolicy(PolicyConfig(n_obs_steps=n_obs_steps, horizon=horizon, n_action_steps=n_action_steps,
                                   action_offset=action_offset, temporal_ensemble=temporal_ensemble), **kw)


def obs_at(t: int, n: int) -> dict[str, np.ndarray]:
    """The observation of tick t for n envs: state [t, env, 0], environment state [env, -t]."""
    env = np.arange(n, dtype=np.float32)
    return {"observation.state": np.stack([np.full(n, t, np.float32), env, np.zeros(n, np.float32)], 1),
            "observation.environment_state": np.stack([env, np.full(n, -t, np.float32)], 1)}


@pytest.fixture(params=["numpy buffers", "tensor buffers"])
def buffers(request, monkeypatch):
    if request.param == "tensor buffers":
        monkeypatch.setattr(queues, "_HOST_DEVICES", ())
    return request.param


def expected_queue_actions(ticks: int, n: int, n_act: int, first: int, resets: dict[int, list[int]]) -> np.ndarray:
    """(ticks, n, 2): each env executes chunk actions first.. of its last chunk, a new one when it has
    executed n_act of them or was reset; action i of the chunk of tick c is [c, i]."""
    start = np.zeros(n, int)
    out = np.zeros((ticks, n, 2))
    for t in range(ticks):
        for e in range(n):
            if t == 0 or e in resets.get(t, []) or t - start[e] >= n_act:
                start[e] = t
            out[t, e] = [start[e], first + t - start[e]]
    return out


# ---- queues ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("action_offset", [0, -1])
def test_one_env_gets_a_new_chunk_every_n_action_steps(buffers, action_offset):
    p = stub(action_offset=action_offset)
    runner = ChunkRunner(p, 1)
    got = np.stack([runner.step(obs_at(t, 1)).numpy() for t in range(10)])
    assert len(p.calls) == 4  # ticks 0, 3, 6, 9
    np.testing.assert_array_equal(got, expected_queue_actions(10, 1, 3, -action_offset, {}))


@pytest.mark.parametrize("fixed_shape", [False, True])
def test_envs_reset_at_different_times_get_their_own_chunks(buffers, fixed_shape):
    p = stub()
    runner = ChunkRunner(p, 3, fixed_shape=fixed_shape)
    resets = {2: [1], 4: [2], 7: [0, 2]}
    got = []
    for t in range(12):
        if t in resets:
            runner.reset(resets[t])
        got.append(runner.step(obs_at(t, 3)).numpy())
    np.testing.assert_array_equal(np.stack(got), expected_queue_actions(12, 3, 3, 0, resets))
    sizes = [len(c["observation.state"]) for c in p.calls]
    if fixed_shape:
        assert set(sizes) == {3}  # always the whole batch: shapes never change (CUDA graphs, compile)
    else:
        # only the envs that need one: tick 0 all, 2 env 1, 3 envs 0 and 2, 4 env 2, 5 env 1, 6 env 0,
        # 7 envs 0 and 2 (reset), 8 env 1, 10 envs 0 and 2, 11 env 1
        assert sizes == [3, 1, 2, 1, 1, 1, 2, 1, 2, 1]


def test_reset_of_every_env_starts_over(buffers):
    p = stub()
    runner = ChunkRunner(p, 2)
    for t in range(2):
        runner.step(obs_at(t, 2))
    runner.reset()
    a = runner.step(obs_at(2, 2)).numpy()
    np.testing.assert_array_equal(a, [[2, 0], [2, 0]])  # a new chunk, its first action
    np.testing.assert_array_equal(p.calls[-1]["observation.state"][:, :, 0], [[2, 2], [2, 2]])


def test_history_starts_with_the_first_observation_repeated(buffers):
    p = stub(n_obs_steps=3, horizon=4, n_action_steps=3)
    runner = ChunkRunner(p, 2)
    for t in range(9):
        if t == 5:
            runner.reset([1])
        runner.step(obs_at(t, 2))
    hist = [(c["observation.state"][:, :, 0].tolist(), c["observation.state"][:, :, 1].tolist()) for c in p.calls]
    # (newest-state tick per env and step, env per env and step), oldest step first
    assert hist == [
        ([[0, 0, 0], [0, 0, 0]], [[0, 0, 0], [1, 1, 1]]),  # tick 0: both envs start
        ([[1, 2, 3], [1, 2, 3]], [[0, 0, 0], [1, 1, 1]]),  # tick 3: the last three ticks
        ([[5, 5, 5]], [[1, 1, 1]]),                        # tick 5: env 1 starts again
        ([[4, 5, 6]], [[0, 0, 0]]),                        # tick 6: env 0 goes on
        ([[6, 7, 8]], [[1, 1, 1]]),                        # tick 8: env 1's history no older than its reset
    ]
    env_state = p.calls[1]["observation.environment_state"]
    np.testing.assert_array_equal(env_state[0], [[0, -1], [0, -2], [0, -3]])  # every key is kept in step


def test_step_returns_float32_tensors_and_the_engine_fresh_arrays(buffers):
    p = stub()
    runner = ChunkRunner(p, 2)
    a = runner.step(obs_at(0, 2))
    assert isinstance(a, torch.Tensor) and a.dtype == torch.float32 and a.shape == (2, 2)
    engine = InferenceEngine(stub(), 2, device="cpu")
    first = engine.act(obs_at(0, 2))
    assert isinstance(first, np.ndarray) and first.dtype == np.float32 and first.shape == (2, 2)
    kept = first.copy()
    first[:] = 99  # the caller may keep or change what it got
    np.testing.assert_array_equal(engine.act(obs_at(1, 2)), kept + [0, 1])


def test_torch_observations_act_like_numpy_ones(buffers):
    a, b = ChunkRunner(stub(), 2), ChunkRunner(stub(), 2)
    for t in range(7):
        o = obs_at(t, 2)
        o64 = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in o.items()}
        assert torch.equal(a.step(o), b.step(o64))


# ---- temporal ensembling -----------------------------------------------------------------------------


def act_average(table: np.ndarray, t: int, env: int, start: int, k: float, first: int) -> np.ndarray:
    """ACT's temporal ensembling (Zhao et al. 2023, imitate_episodes.py) written out: the actions for t
    of every chunk predicted since the episode started (`start`) that covers t, oldest first, weighted
    exp(-k * i), normalized."""
    horizon = table.shape[2]
    actions = [table[c, env, first + t - c] for c in range(start, t + 1) if first + t - c < horizon]
    w = np.exp(-k * np.arange(len(actions)))
    w /= w.sum()
    return (np.array(actions) * w[:, None]).sum(0)


@pytest.mark.parametrize("action_offset", [0, -1])
def test_temporal_ensembling_is_acts_weighted_average(buffers, action_offset):
    k, ticks, n = 0.3, 14, 2
    table = np.random.default_rng(0).normal(size=(ticks, n, 5, 2)).astype(np.float32)
    p = stub(horizon=5, n_action_steps=1, action_offset=action_offset, table=table)
    engine = InferenceEngine(p, n, device="cpu", temporal_ensemble=k)
    start = [0, 0]
    for t in range(ticks):
        if t == 6:
            engine.reset([1])
            start[1] = 6
        got = engine.act(obs_at(t, n))
        want = [act_average(table, t, e, start[e], k, -action_offset) for e in range(n)]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert len(p.calls) == ticks and {len(c["observation.state"]) for c in p.calls} == {n}  # every tick, every env


# ---- cameras -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_cameras_reach_the_policy_as_chw_floats_in_0_1(buffers, layout):
    p = stub(cameras=True)
    runner = ChunkRunner(p, 2)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (2, 4, 5, 3), dtype=np.uint8) for _ in range(2)]
    for t, f in enumerate(frames):
        runner.step({**obs_at(t, 2), "observation.images.cam": f if layout == "HWC" else f.transpose(0, 3, 1, 2)})
    cam = p.calls[0]["observation.images.cam"]
    assert cam.shape == (2, 2, 3, 4, 5) and cam.dtype == torch.float32
    want = torch.as_tensor(frames[0]).permute(0, 3, 1, 2).float() / 255.0
    assert torch.equal(cam[:, 0], want) and torch.equal(cam[:, 1], want)


# ---- refused observations ----------------------------------------------------------------------------


def bad_observations() -> dict[str, tuple[dict, str | None]]:
    good = obs_at(5, 2)  # valid keys of a refused tick must not reach the history either
    nan, inf = good["observation.state"].copy(), good["observation.environment_state"].copy()
    nan[1, 2] = np.nan
    inf[0, 0] = np.inf
    return {
        "missing key": ({"observation.state": good["observation.state"]}, "no 'observation.environment_state'"),
        "wrong shape": ({**good, "observation.state": np.zeros((2, 4), np.float32)}, "per-step shape"),
        "NaN": ({**good, "observation.state": nan}, "NaN"),
        "inf in a tensor": ({**good, "observation.environment_state": torch.as_tensor(inf)}, "NaN or inf"),
        "wrong batch size": ({**good, "observation.environment_state": np.zeros((3, 2), np.float32)}, "batch size 3"),
        "beyond float32": ({**good, "observation.state": np.full((2, 3), 1e300)}, "NaN or inf"),
        "complex dtype": ({**good, "observation.state": good["observation.state"].astype(np.complex64)}, "dtype"),
        "a list": ({**good, "observation.state": [[0.0, 0.0, 0.0]] * 2}, None),
    }


@pytest.mark.parametrize("case", list(bad_observations()))
def test_bad_observations_raise_and_change_nothing(buffers, case):
    obs, message = bad_observations()[case]
    p, q = stub(n_obs_steps=3, horizon=4, n_action_steps=2), stub(n_obs_steps=3, horizon=4, n_action_steps=2)
    runner, clean = ChunkRunner(p, 2), ChunkRunner(q, 2)
    runner.step(obs_at(0, 2))
    clean.step(obs_at(0, 2))
    with pytest.raises((ObservationError, AttributeError), match=message) as err:
        runner.step(obs)
    if case != "a list":  # Policy.check_obs refuses anything without .shape with an AttributeError
        assert err.type is ObservationError
    for t in range(1, 8):  # the refused tick left no trace: histories and queues go on as if it never came
        assert torch.equal(runner.step(obs_at(t, 2)), clean.step(obs_at(t, 2)))
    assert len(p.calls) == len(q.calls) == 4
    for mine, theirs in zip(p.calls, q.calls):
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_engine_refuses_bad_observations_and_devices():
    engine = InferenceEngine(stub(), 2, device="cpu")
    with pytest.raises(ObservationError, match="batch size 1"):
        engine.act(obs_at(0, 1))
    with pytest.raises(ConfigError, match="cuda_graphs"):
        InferenceEngine(stub(), 1, device="cpu", cuda_graphs=True)
    with pytest.raises(ConfigError, match="num_envs"):
        InferenceEngine(stub(), 0, device="cpu")


# ---- a real policy -----------------------------------------------------------------------------------


def test_engine_matches_select_action_and_predict_chunk_for_the_mlp():
    features = dict(FEATURES)
    torch.manual_seed(0)
    policy = make_policy("mlp", features, STATS, {"hidden": [16, 16], "n_action_steps": 2}).eval()  # as the engine
    torch.manual_seed(0)
    twin = make_policy("mlp", features, STATS, {"hidden": [16, 16], "n_action_steps": 2})
    engine = InferenceEngine(twin, 3, device="cpu")
    rng = np.random.default_rng(0)
    for t in range(6):
        o = {k: rng.normal(size=(3, *f.shape)).astype(np.float32) for k, f in features.items() if k != "action"}
        if t == 3:
            policy.reset([0])
            engine.reset([0])
        np.testing.assert_array_equal(engine.act(o), policy.select_action(o).numpy())
    hist = {k: rng.normal(size=(4, 2, *f.shape)).astype(np.float32) for k, f in features.items() if k != "action"}
    chunk = engine.predict_chunk(hist)
    assert chunk.shape == (4, policy.config.horizon, 2) and chunk.dtype == np.float32
    with torch.inference_mode():
        want = policy.predict_action_chunk({k: torch.as_tensor(v) for k, v in hist.items()})
    np.testing.assert_array_equal(chunk, want.numpy())


def test_runner_predictor_skips_only_the_redundant_check():
    torch.manual_seed(0)
    policy = make_policy("mlp", FEATURES, STATS, {"hidden": [16]}).eval()
    hist = {k: torch.randn(3, 2, *f.shape) for k, f in FEATURES.items() if k != "action"}
    with torch.inference_mode():
        assert torch.equal(history_predictor(policy)(hist), policy.predict_action_chunk(hist))

    class Overriding(StubPolicy):
        def predict_action_chunk(self, obs):
            return super().predict_action_chunk(obs) + 1

    own = Overriding(PolicyConfig(horizon=5, n_action_steps=3))
    assert history_predictor(own) == own.predict_action_chunk  # a policy's own chunk prediction is kept
    np.testing.assert_array_equal(InferenceEngine(own, 1, device="cpu").act(obs_at(4, 1)), [[5, 1]])


# ---- trace=True: the chunk predictor as a frozen TorchScript graph -----------------------------------


def _episode_actions(engine, features, ticks: int, n: int, resets: dict[int, list[int]], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for t in range(ticks):
        if t in resets:
            engine.reset(resets[t])
        o = {k: rng.normal(size=(n, *f.shape)).astype(np.float32) for k, f in features.items()
             if k != "action" and not f.is_video}
        o.update({k: rng.integers(0, 256, size=(n, *f.shape), dtype=np.uint8) for k, f in features.items()
                  if f.is_video})
        out.append(engine.act(o))
    return np.stack(out)


@pytest.mark.parametrize("kind", ["mlp", "diffusion", "diffusion_camera"])
def test_traced_engine_acts_exactly_like_the_eager_one(kind):
    features = {**FEATURES, **(CAMERA if kind.endswith("camera") else {})}
    stats = STATS  # cameras are read in [0, 1], without statistics
    options = {"hidden": [16], "n_action_steps": 2} if kind == "mlp" else {
        "num_inference_steps": 3, "down_dims": [16, 32], "diffusion_step_embed_dim": 8, "horizon": 8,
        "n_action_steps": 3, "image_feature_dim": 8}
    torch.manual_seed(0)
    policy = make_policy(kind.split("_")[0], features, stats, options)
    runs = []
    for trace in (False, True):
        torch.manual_seed(7)  # diffusion draws its noise from torch's stream: tracing must not move it
        engine = InferenceEngine(policy, 1, device="cpu", trace=trace)
        assert engine.trace is trace
        runs.append(_episode_actions(engine, features, 11, 1, {6: [0]}, seed=1))
    np.testing.assert_array_equal(runs[1], runs[0])


def test_traced_engine_serves_many_envs_at_a_fixed_shape():
    torch.manual_seed(0)
    policy = make_policy("mlp", FEATURES, STATS, {"hidden": [16], "n_action_steps": 3})
    eager_engine = InferenceEngine(policy, 3, device="cpu")
    eager_engine.runner.fixed_shape = True  # as the traced one: a gemm of 3 rows rounds unlike one of 1 row
    eager = _episode_actions(eager_engine, FEATURES, 9, 3, {2: [1], 4: [0, 2]}, seed=2)
    traced_engine = InferenceEngine(policy, 3, device="cpu", trace=True)
    assert traced_engine.runner.fixed_shape  # envs needing a chunk at different ticks: the whole batch predicts
    traced = _episode_actions(traced_engine, FEATURES, 9, 3, {2: [1], 4: [0, 2]}, seed=2)
    np.testing.assert_array_equal(traced, eager)


def test_trace_refuses_what_it_cannot_serve():
    with pytest.raises(ConfigError, match="pick one"):
        InferenceEngine(stub(), 1, device="cpu", trace=True, compile=True)
    torch.manual_seed(0)
    policy = make_policy("mlp", FEATURES, STATS, {"hidden": [8]})
    engine = InferenceEngine(policy, 1, device="cpu", trace=True)
    with pytest.raises(ObservationError, match="batch size 2"):  # checked before the graph sees anything
        engine.act(obs_at(0, 2))


# ---- prefetch: the next chunk predicted on a worker thread while the current one runs out -------------


def test_prefetched_chunks_are_planned_d_ticks_ahead_and_read_from_d_steps_in(buffers):
    import threading

    threads = []
    policy = stub(n_obs_steps=2, horizon=8, n_action_steps=3)
    original = policy.forward_chunk

    def recording(obs):
        threads.append(threading.current_thread().name)
        return original(obs)

    policy.forward_chunk = recording
    engine = InferenceEngine(policy, 1, device="cpu", prefetch=2)
    got = [engine.act(obs_at(t, 1))[0].tolist() for t in range(12)]
    # tick 0 predicts on the tick; then each chunk is asked for with 2 actions left (ticks 1, 4, 7, 10) and
    # the action at tick t comes from the chunk of the requesting tick s, at index t - s
    want = [[0, 0], [0, 1], [0, 2], [1, 2], [1, 3], [1, 4], [4, 2], [4, 3], [4, 4], [7, 2], [7, 3], [7, 4]]
    assert got == want
    # a reset waits for the chunk in flight (asked at tick 10) and drops it; the next episode starts on the tick
    engine.reset()
    assert threads[0] == threading.current_thread().name  # the episode's first chunk: on the tick
    assert all(n.startswith("chunk-prefetch") for n in threads[1:]) and len(threads) == 5  # 1, 4, 7, 10 asked
    assert engine.act(obs_at(20, 1))[0].tolist() == [20, 0]
    assert [engine.act(obs_at(t, 1))[0].tolist() for t in (21, 22, 23)] == [[20, 1], [20, 2], [21, 2]]
    engine.close()


def test_prefetch_with_the_traced_diffusion_policy_is_reproducible():
    torch.manual_seed(0)
    policy = make_policy("diffusion", FEATURES, STATS, {"num_inference_steps": 2, "down_dims": [16, 32],
                                                        "diffusion_step_embed_dim": 8, "horizon": 8,
                                                        "n_action_steps": 3})
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        engine = InferenceEngine(policy, 1, device="cpu", trace=True, prefetch=3)
        runs.append(_episode_actions(engine, FEATURES, 14, 1, {7: [0]}, seed=3))
        engine.close()
    assert np.isfinite(runs[0]).all()
    np.testing.assert_array_equal(runs[1], runs[0])


def test_prefetch_refuses_what_it_cannot_serve():
    with pytest.raises(ConfigError, match="one env"):
        InferenceEngine(stub(horizon=8), 2, device="cpu", prefetch=1)
    with pytest.raises(ConfigError, match=r"prefetch=4 must be in 1\.\.3"):
        InferenceEngine(stub(horizon=8, n_action_steps=3), 1, device="cpu", prefetch=4)
    with pytest.raises(ConfigError, match="longer than 2 x n_action_steps"):
        InferenceEngine(stub(horizon=3, n_action_steps=3), 1, device="cpu", prefetch=1)
    with pytest.raises(ConfigError, match="one env"):
        InferenceEngine(stub(horizon=8, temporal_ensemble=0.1), 1, device="cpu", prefetch=1)
