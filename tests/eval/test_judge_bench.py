"""`robolearn bench judge` at the smoke budget: runs end to end from the CLI and writes every key the
issue names (the figures themselves mean nothing at this budget)."""

import json

from robolearn.cli.main import main
from robolearn.eval.judge_bench import JudgeBenchConfig, format_report, merge_policies


def test_bench_judge_cli_writes_the_four_keys(tmp_path, capsys):
    out = tmp_path / "judge.json"
    assert main(["bench", "judge", "--quick", "--json", str(out), f"work_dir={tmp_path / 'work'}"]) == 0
    r = json.loads(out.read_text())
    for key in ("stall_stage_agreement", "policy_rank_agreement", "selection_rank_corr", "sim_only_rank_corr"):
        assert key in r
        assert r[key] is None or -1.0 <= r[key] <= 1.0
    j = r["judge"]
    assert set(j["policies"]) == {"good", "medium", "poor"}
    assert all(g["episodes"] == 2 for g in j["policies"].values())
    assert j["matches"] <= j["failed_episodes"] <= 6
    assert (tmp_path / "work" / "judge" / "report.html").is_file()  # a kept work dir keeps the judge report
    assert r["selection"]["budget"]["quick"] is True
    printed = capsys.readouterr().out
    assert "stall_stage_agreement" in printed and "selection_rank_corr" in printed
    assert format_report(r).splitlines()[0].startswith("check")


def test_merged_dataset_names_each_episodes_policy(tmp_path):
    from robolearn.data.dataset import DatasetReader

    work = tmp_path / "work"
    cfg = JudgeBenchConfig(quick=True, work_dir=str(work), json_path="", selection=False)
    from robolearn.eval import judge_bench

    cfg = cfg.resolved()
    parts = {name: judge_bench._collect(cfg, work / name, 2, 10 + i, 0.0, 0.0)
             for i, name in enumerate(("a", "b"))}
    merged = DatasetReader(merge_policies(parts, work / "merged"))
    assert merged.num_episodes == 4
    assert [merged.meta.episode_info(e)["policy"] for e in range(4)] == ["a", "a", "b", "b"]
    assert merged.meta.success(0) is not None and merged.meta.stages(0) is not None
