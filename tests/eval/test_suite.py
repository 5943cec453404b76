"""`robolearn eval-suite` on two tiny untrained MLPs x lift x 2 seeds x 2 settings x 4 episodes: the table
and metrics, the report, the recorded dataset, identical reruns, and bad input.

The policies are untrained, so success is ~0; what is checked is the bookkeeping, not the skill."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from robolearn.errors import ConfigError
from robolearn.eval.suite import SuiteConfig, format_results, pick_videos, run, run_name
from robolearn.stats import wilson_interval

HEAVY = {"physics": {"mass_scale": [0.7, 1.3], "friction_scale": [0.6, 1.4]}, "visual": {"object_color_jitter": 0.2}}
SMALL = {"episodes": 4, "num_envs": 2, "max_episode_steps": 10, "video_size": (64, 64), "record_image_size": (64, 64),
         "fsync": False, "progress": False}  # one image size: the renderer's mesh decimation is done once


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """A tiny MLP over 2 envs: more intra-op threads only contend with the physics on a small CPU."""
    from robolearn.training import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def policies(tmp_path_factory) -> list[str]:
    """Two tiny MLP checkpoints of lift (different seeds and widths), in run dirs mlp_a and mlp_b that
    carry their dataset's env config as `robolearn train bc` writes it."""
    import torch

    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect
    from robolearn.data.dataset import DatasetReader
    from robolearn.policies import make_policy

    tmp = tmp_path_factory.mktemp("suite_policies")
    ds = collect(CollectConfig(task="lift", episodes=2, out=str(tmp / "d"), num_envs=2, cameras=[], progress=False,
                               fsync=False, max_episode_steps=30))
    reader = DatasetReader(ds)
    out = []
    for name, seed, hidden in (("mlp_a", 0, [32]), ("mlp_b", 1, [16, 16])):
        torch.manual_seed(seed)
        policy = make_policy("mlp", reader.features, reader.meta.stats, {"hidden": hidden})
        policy.metadata = {"dataset": str(ds), "env": reader.meta.robolearn["env"]}
        out.append(str(policy.save(tmp / name / "checkpoints" / "last")))
    return out


@pytest.fixture(scope="module")
def suite(policies, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("suite") / "run"
    cfg = SuiteConfig(policies=policies, seeds=[1000, 2000], settings=["nominal"], randomization={"heavy": HEAVY},
                      videos=1, record=True, out=str(out), **SMALL)
    return run(cfg), out


def test_table_and_metrics(suite):
    r, out = suite
    assert json.loads((out / "metrics.json").read_text()) == r
    assert r["policies"] == {"mlp_a": r["cells"][0]["policy_dir"], "mlp_b": r["cells"][-1]["policy_dir"]}
    assert r["tasks"] == ["lift"]  # each policy's own recorded task
    assert list(r["settings"]) == ["nominal", "heavy"]
    cells = r["cells"]
    assert [(c["policy"], c["setting"], c["seed"]) for c in cells] == [
        (p, s, seed) for p in ("mlp_a", "mlp_b") for s in ("nominal", "heavy") for seed in (1000, 2000)]
    for c in cells:
        assert c["task"] == "lift" and c["episodes"] == 4 and len(c["per_episode"]) == 4
        assert (out / c["dir"] / "metrics.json").is_file()
        lo, hi = c["ci95"]
        assert [lo, hi] == pytest.approx(list(wilson_interval(c["successes"], 4)))
        assert list(c["stage_reach_rates"]) == ["reach", "grasp", "lift"]
        assert c["stage_reach_rates"]["reach"] == 1.0
        assert all(1 <= e["length"] <= 10 for e in c["per_episode"])
        # the setting replaced the recorded env's randomization
        mass = c["env"]["randomization"]["physics"]["mass_scale"]
        assert mass == ([0.7, 1.3] if c["setting"] == "heavy" else [1.0, 1.0])

    aggs = r["aggregates"]
    assert [(a["policy"], a["setting"]) for a in aggs] == [
        ("mlp_a", "nominal"), ("mlp_a", "heavy"), ("mlp_b", "nominal"), ("mlp_b", "heavy")]
    for a in aggs:
        mine = [c for c in cells if (c["policy"], c["setting"]) == (a["policy"], a["setting"])]
        k = sum(c["successes"] for c in mine)
        assert a["seeds"] == [1000, 2000] and a["episodes"] == 8 and a["successes"] == k
        assert a["ci95"] == pytest.approx(list(wilson_interval(k, 8)))
        lengths = [e["length"] for c in mine for e in c["per_episode"]]
        assert a["mean_episode_length"] == pytest.approx(np.mean(lengths))
        assert (a["mean_time_to_success_s"] is None) == (k == 0)

    md = (out / "results.md").read_text()
    assert "| policy | task | setting | episodes | success | 95% CI |" in md
    assert "| policy | task | setting | seed |" in md
    assert md.count("| mlp_b | lift | heavy |") == 3  # one aggregate row, two cells
    assert "physics.mass_scale=[0.7, 1.3]" in md
    text = format_results(r)
    assert "mlp_a" in text and "heavy" in text and "95% CI" in text and str(out / "report.html") in text
    for png in ("success.png", "stages.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_is_self_contained_with_videos(suite):
    r, out = suite
    page = (out / "report.html").read_text()
    assert "<table>" in page and "<td>mlp_a</td>" in page and "<td>heavy</td>" in page
    assert page.count("data:image/png;base64,") == 2  # success.png, stages.png
    sources = re.findall(r"src=[\"']([^\"']*)", page)
    assert sources and all(s.startswith("data:") for s in sources)  # nothing points at a file
    n_videos = 0
    for c in r["cells"]:
        # videos=1: one sampled success (when there is one) and one sampled failure per cell
        fails = [e for e in c["per_episode"] if not e["success"]]
        oks = [e for e in c["per_episode"] if e["success"]]
        assert len(c["videos"]) == min(1, len(oks)) + min(1, len(fails))
        for v in c["videos"]:
            path = out / v["path"]
            outcome = "success" if v["success"] else "failure"
            assert path.is_file() and path.name == f"episode_{v['episode']}_{outcome}.mp4"
            assert c["per_episode"][v["episode"]]["video"] == v["path"]
            assert c["per_episode"][v["episode"]]["success"] == v["success"]
        n_videos += len(c["videos"])
    assert n_videos >= 8 and page.count("data:video/mp4;base64,") == n_videos
    assert r["warnings"] == []  # the filming re-run repeated every episode


def test_recorded_dataset(suite):
    from robolearn.data.dataset import DatasetMeta

    r, out = suite
    assert r["datasets"] == {"lift": "episodes"}
    meta = DatasetMeta.load(out / "episodes")
    assert meta.num_episodes == 8 * 4
    assert meta.features["observation.images.front"].shape == (64, 64, 3)
    assert {"observation.state", "observation.environment_state", "action", "next.success"} <= set(meta.features)
    assert meta.stage_names == ["reach", "grasp", "lift"]
    rows = {(c["policy"], c["setting"], c["seed"], e["episode"]): e for c in r["cells"] for e in c["per_episode"]}
    seen = set()
    for ep in range(meta.num_episodes):
        info = meta.episode_info(ep)
        key = (info["policy"], info["setting"], info["seed"], info["episode"])
        assert key in rows and key not in seen
        seen.add(key)
        row = rows[key]
        assert meta.success(ep) == row["success"]
        assert int(meta.episode_rows[ep]["length"]) == row["length"]
        stages = meta.stages(ep)
        assert stages.source == "sim" and stages.names[0] == "reach"
        assert stages.start_frames[0] == 0 and stages.end_frames[-1] == row["length"] - 1
        assert "reset" in info and info["task"] == "lift"
    assert seen == set(rows)
    assert {meta.episode_info(ep)["policy"] for ep in range(meta.num_episodes)} == {"mlp_a", "mlp_b"}


def test_recorded_episode_replays_frame_for_frame(suite, tmp_path):
    """A nominal episode re-executed from its recorded reset with its recorded actions reproduces its
    recorded states and camera frames: frames, actions and stages line up."""
    from robolearn.data.dataset import DatasetMeta
    from robolearn.data.replay import ReplayConfig
    from robolearn.data.replay import run as replay
    from robolearn.video import read_mp4

    r, out = suite
    meta = DatasetMeta.load(out / "episodes")
    ep = next(e for e in range(meta.num_episodes) if meta.episode_info(e)["setting"] == "nominal")
    res = replay(ReplayConfig(dataset=str(out / "episodes"), episode=ep, video=str(tmp_path / "replay.mp4")))
    assert res["max_state_divergence"] < 1e-6 and res["final_state_divergence"] < 1e-6
    assert res["replayed_success"] == res["recorded_success"]
    frames = read_mp4(tmp_path / "replay.mp4").astype(np.int16)  # recording | replay, side by side
    assert frames.shape[1:] == (64, 128, 3)
    assert np.abs(frames[:, :, :64] - frames[:, :, 64:]).mean() < 6  # the same views, up to compression


def _strip(d):
    """Everything but wall times and where the run was written."""
    if isinstance(d, dict):
        return {k: _strip(v) for k, v in d.items() if k not in ("wall_s", "out", "config")}
    if isinstance(d, list):
        return [_strip(v) for v in d]
    return d


def test_identical_reruns(policies, suite, tmp_path):
    cfg = {"policies": policies[1:], "seeds": [2000], "settings": ["nominal"], "randomization": {"heavy": HEAVY},
           "videos": 0, **SMALL}
    a = run(SuiteConfig(**cfg, out=str(tmp_path / "a")))
    b = run(SuiteConfig(**cfg, out=str(tmp_path / "b")))
    assert a["wall_s"] > 0 and _strip(a) == _strip(b)
    # the same cells of the big suite (which also filmed and recorded them) have the same episodes
    big = {(c["policy"], c["setting"], c["seed"]): c for c in suite[0]["cells"]}
    for c in a["cells"]:
        same = big[(c["policy"], c["setting"], c["seed"])]
        drop = lambda rows: [{k: v for k, v in e.items() if k != "video"} for e in rows]  # noqa: E731
        assert drop(c["per_episode"]) == drop(same["per_episode"])
        assert c["stage_reach_rates"] == same["stage_reach_rates"]


def test_pick_videos_draws_successes_and_failures():
    rows = [{"episode": k, "success": k in (0, 2, 5)} for k in range(7)]
    ids = pick_videos(rows, 2, [1000, 7])
    assert len(ids) == 4 and ids == sorted(ids)
    assert sum(rows[k]["success"] for k in ids) == 2
    assert pick_videos(rows, 2, [1000, 7]) == ids  # seeded
    assert pick_videos(rows, 5, 0) == list(range(7))  # fewer than k of each: all of them
    assert pick_videos([{"episode": 0, "success": False}], 3, 0) == [0]


def test_policy_names(policies, tmp_path):
    assert run_name(policies[0]) == "mlp_a"
    assert run_name(Path(policies[1]).parent.parent) == "mlp_b"  # a run dir
    with pytest.raises(ConfigError, match="two policies are named 'mlp_a'.*names="):
        run(SuiteConfig(policies=[policies[0], policies[0]], out=str(tmp_path)))
    with pytest.raises(ConfigError, match="1 names for 2 policies"):
        run(SuiteConfig(policies=policies, names=["x"], out=str(tmp_path)))


@pytest.mark.parametrize("kw, message", [
    ({"policies": ["{tmp}/nope"]}, r"policy '.*nope' does not exist; list checkpoint or run directories"),
    ({"policies": []}, r"name at least one policy, e\.g\. policies=\[runs/bc/lift_mlp\]"),
    ({"randomization": {"heavy": {"physics": {"mass_scal": [0.7, 1.3]}}}},
     r"randomization setting 'heavy': unknown config key 'physics\.mass_scal'.*Did you mean 'mass_scale'\?"),
    ({"episodes": 0}, r"episodes=0 must be at least 1"),
    ({"settings": ["heavvy"]}, r"unknown setting 'heavvy'; built-in settings: nominal, physics, visual, heavy.*"
                               r"Did you mean 'heavy'\?"),
])
def test_bad_input_is_one_clear_error(policies, tmp_path, kw, message):
    kw = {"policies": policies, **kw}
    kw["policies"] = [p.format(tmp=tmp_path) for p in kw["policies"]]
    with pytest.raises(ConfigError, match=message):
        run(SuiteConfig(out=str(tmp_path / "out"), **kw))
    assert not (tmp_path / "out").exists()  # refused before any work


def test_cli_row(policies, tmp_path, monkeypatch, capsys):
    """The row `robolearn.cli.main.VERBS` gets (a copy of it: the lead adds it there)."""
    from robolearn.cli import main as cli

    row = cli.Verb(
        "evaluate policies x tasks x seeds x randomization settings: success table, plots, videos, one HTML report",
        "robolearn.eval.suite",
        config="SuiteConfig",
        flags=(cli.Flag("--policies", "policy checkpoint or run directories, e.g. [runs/bc/a,runs/bc/b] (sets "
                        "policies)", field="policies", metavar="LIST", yaml=True),
               cli.Flag("--tasks", "tasks, e.g. [lift] (sets tasks; default: each policy's own)", field="tasks",
                        metavar="LIST", yaml=True),
               cli.Flag("--settings", "randomization settings: nominal, physics, visual, heavy (sets settings)",
                        field="settings", metavar="LIST", yaml=True),
               cli.Flag("--episodes", "episodes per cell (sets episodes)", field="episodes", metavar="N", yaml=True),
               cli.Flag("--record", "also record every episode into out/episodes (sets record=true)", field="record"),
               cli.Flag("--out", "output directory (sets out)", field="out", metavar="DIR")),
        show=cli._show_module("robolearn.eval.suite"),
    )
    monkeypatch.setitem(cli.VERBS, "eval-suite", row)
    assert cli.main(["eval-suite", "--policies", f"[{policies[0]},{policies[1]}]", "--tasks", "[lift]",
                     "--settings", "[nominal,heavy]", "--episodes", "3", "--record", "--out", str(tmp_path),
                     "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "mlp_b" in printed and "episodes: 3" in printed and "record: true" in printed
    assert "settings: [nominal, heavy]" in printed
    assert cli.main(["eval-suite", "--policies", f"[{policies[0]}]", "--episodes", "0"]) == 2
    assert "robolearn: error: eval suite: episodes=0 must be at least 1" in capsys.readouterr().err


def test_settings_may_name_custom_settings_in_order():
    """`settings` lists built-in and custom names alike, in evaluation order; custom ones not listed follow."""
    real = {"physics": {"mass_scale": [1.1, 1.4]}}
    cfg = SuiteConfig(policies=["x"], settings=["real", "nominal"], randomization={"real": real, "light": {}})
    configs = cfg.randomization_configs()
    assert list(configs) == ["real", "nominal", "light"]
    assert configs["real"].physics.mass_scale == (1.1, 1.4) or list(configs["real"].physics.mass_scale) == [1.1, 1.4]
    with pytest.raises(ConfigError, match="listed twice"):
        SuiteConfig(policies=["x"], settings=["nominal", "nominal"]).randomization_configs()
