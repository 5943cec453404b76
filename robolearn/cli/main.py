"""`robolearn <verb> [--preset NAME] [KEY=VALUE ...]`: each verb builds a config and calls one function.

A verb is one row of `VERBS`: the module that does the work, the function to call, the config
dataclass that function takes and the `configs/<group>/` its presets live in. The CLI parses
`--preset NAME` and dotted `KEY=VALUE` overrides, builds the config with `robolearn.config.load_config`
and calls `run(cfg)`; all the work lives in that importable function, which tests call directly.
The module is imported only when its verb runs (or shows `--help`), so one verb's heavy imports
never slow down another. Adding a verb is adding a row.

A `RobolearnError` (bad override, missing file, unknown task, ...) is printed as one line,
`robolearn: error: <message>`, with exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import robolearn
from robolearn.errors import RobolearnError

OVERRIDE_HELP = (
    "config overrides, dotted keys with YAML values, applied after the preset: e.g. num_envs=8 "
    "randomization.physics.mass_scale=[0.8,1.2] cameras=[front,wrist] task_options.clearance=0.002 "
    "(quote values with spaces for the shell)"
)


@dataclass(frozen=True)
class Flag:
    """A verb-specific option: a shorthand for one config key, or (field=None) a switch for `show`."""

    option: str
    """the option string, e.g. --json; a name without dashes is a positional argument (e.g. dataset)"""
    help: str
    """one line for --help"""
    field: str | None = None
    """dotted config key the option sets; None keeps the value in the parsed args for `Verb.show`"""
    metavar: str | None = None
    """takes a value when set (e.g. FILE); a switch that sets true otherwise"""
    yaml: bool = False
    """the value is YAML (a number, a list), not a string taken literally"""


@dataclass(frozen=True)
class Verb:
    """One `robolearn <verb>`: which function it runs and with which config."""

    help: str
    """one line for `robolearn --help`"""
    module: str
    """module imported when the verb runs"""
    function: str = "run"
    """function in `module`: called as function(cfg), or function() when `config` is None"""
    config: str | None = None
    """config dataclass in `module` built from --preset and the overrides"""
    preset_group: str | None = None
    """--preset NAME loads configs/<preset_group>/NAME.yaml"""
    flags: tuple[Flag, ...] = ()
    """verb-specific options"""
    show: Callable[[Any, argparse.Namespace], None] | None = None
    """prints the function's return value; None prints nothing (the function reports itself)"""
    raw: bool = False
    """the verb parses its own arguments: function(argv) gets everything after the verb and returns the
    exit code (`robolearn ros launch FILE name:=value ...`)"""


# ------------------------------------------------------------------------------------------------
# `robolearn tasks`


def format_tasks(tasks: Sequence[dict[str, Any]]) -> str:
    """A readable listing of `robolearn.sim.registry.describe_tasks()`: stages, spaces, options per task."""
    blocks = []
    for task in tasks:
        lines = [f"{task['name']}  {task.get('description', '')}".rstrip()]
        rows: list[tuple[str, str]] = [("stages", " > ".join(task.get("stages", [])) or "-")]
        rows.append(("max steps", str(task.get("max_episode_steps", "-"))))
        spaces = [("observation", k, s, s.get("dtype", "")) for k, s in task.get("observation", {}).items()]
        spaces += [("action", k, s, _bounds(s)) for k, s in task.get("action_modes", {}).items()]
        key_w = max((len(k) for _, k, _, _ in spaces), default=0)
        shape_w = max((len(_shape(s)) for _, _, s, _ in spaces), default=0)
        last = None
        for label, key, space, info in spaces:
            rows.append(("" if label == last else label, f"{key:<{key_w}}  {_shape(space):<{shape_w}}  {info}"))
            last = label
        options = task.get("options") or {}
        rows.append(("options", ", ".join(f"{k}={json.dumps(v)}" for k, v in options.items()) or "-"))
        lines += [f"  {label:<12} {value}" for label, value in rows]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) if blocks else "no tasks registered"


def _shape(space: dict[str, Any]) -> str:
    return str(tuple(space.get("shape", ())))


def _bounds(space: dict[str, Any]) -> str:
    low, high = space.get("low"), space.get("high")
    if low is None or high is None:
        return ""
    low, high = _flat(low), _flat(high)
    if low and high and len(set(low)) == 1 and len(set(high)) == 1:
        return f"[{low[0]:g}, {high[0]:g}]"
    return f"low [{', '.join(f'{v:.3g}' for v in low)}]  high [{', '.join(f'{v:.3g}' for v in high)}]"


def _flat(values: Any) -> list[float]:
    if isinstance(values, list | tuple):
        return [x for v in values for x in _flat(v)]
    return [float(values)]


def _show_tasks(tasks: list[dict[str, Any]], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(tasks, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    else:
        print(format_tasks(tasks))


def _show_info(result: dict[str, Any], args: argparse.Namespace) -> None:
    from robolearn.data.info import format_info

    print(json.dumps(result, indent=2) if args.json else format_info(result))


def _show_replay(result: dict[str, Any], args: argparse.Namespace) -> None:
    from robolearn.data.replay import format_result

    print(format_result(result))


def _show_eval(result: dict[str, Any], args: argparse.Namespace) -> None:
    from robolearn.eval.sim import format_result

    print(format_result(result))


def _show_path(result: Any, args: argparse.Namespace) -> None:
    print(f"wrote {result}")


_OUT = Flag("--out", "output dataset directory (sets out)", field="out", metavar="DIR")
_DATASET = Flag("--dataset", "dataset directory (sets dataset)", field="dataset", metavar="DIR")
_RUN_OUT = Flag("--out", "run directory (sets out)", field="out", metavar="DIR")
_VLM_URL = Flag("--vlm.base-url", "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (sets vlm.base_url)",
                field="vlm.base_url", metavar="URL")
_VLM_MODEL = Flag("--vlm.model", "model name the endpoint serves (sets vlm.model)", field="vlm.model", metavar="NAME")


# ------------------------------------------------------------------------------------------------
# the verbs; a verb name with a space ("bench sim") is a sub-verb


def _show_module(module: str) -> Callable[[Any, argparse.Namespace], None]:
    """The `show` function of `module`, imported when the verb's result is printed."""
    return lambda result, args: importlib.import_module(module).show(result, args)


VERBS: dict[str, Verb] = {
    "tasks": Verb(
        "list the registered tasks: stages, observation and action spaces, options",
        "robolearn.sim.registry",
        function="describe_tasks",
        flags=(Flag("--json", "print the task descriptions as JSON instead of a table"),),
        show=_show_tasks,
    ),
    "bench sim": Verb(
        "measure simulation throughput (env steps per second) and write a JSON report",
        "robolearn.sim.bench",
        config="BenchConfig",
        preset_group="bench",
        flags=(Flag("--json", "write the JSON results to FILE (sets json_path)", field="json_path", metavar="FILE"),),
    ),
    "collect": Verb(
        "record scripted-expert episodes of a task into a LeRobot-layout dataset",
        "robolearn.data.collect",
        config="CollectConfig",
        preset_group="collect",
        flags=(Flag("--task", "task name (sets task)", field="task", metavar="NAME"),
               Flag("--episodes", "episodes to record (sets episodes)", field="episodes", metavar="N", yaml=True),
               _OUT,
               Flag("--resume", "append to the dataset at --out (sets resume=true)", field="resume")),
        show=_show_path,
    ),
    "info": Verb(
        "show a dataset's features, episodes, tasks, stages and success labels",
        "robolearn.data.info",
        config="InfoConfig",
        flags=(Flag("dataset", "dataset directory", field="dataset", metavar="DIR"),
               Flag("--verify", "also check every frame table and video (sets verify=true)", field="verify"),
               Flag("--json", "print the summary as JSON")),
        show=_show_info,
    ),
    "replay": Verb(
        "re-execute a recorded episode's actions in sim and report the state divergence",
        "robolearn.data.replay",
        config="ReplayConfig",
        flags=(_DATASET,
               Flag("--episode", "episode index (sets episode)", field="episode", metavar="N", yaml=True),
               Flag("--video", "write the replay (beside the recording) to FILE.mp4", field="video", metavar="FILE")),
        show=_show_replay,
    ),
    "annotate": Verb(
        "set the stage annotations of a dataset's episodes from a JSON or CSV file",
        "robolearn.data.info",
        function="annotate",
        config="AnnotateConfig",
        flags=(_DATASET, Flag("--file", "annotation file (sets file)", field="file", metavar="FILE")),
        show=lambda r, a: print(f"annotated {len(r['annotated'])} episodes of {r['dataset']}"),
    ),
    "convert robomimic": Verb(
        "convert robomimic / robosuite HDF5 demonstrations into a LeRobot-layout dataset",
        "robolearn.data.convert.robomimic",
        config="RobomimicConvertConfig",
        flags=(Flag("file", "the HDF5 file", field="file", metavar="FILE.hdf5"), _OUT),
        show=_show_path,
    ),
    "convert rosbag": Verb(
        "convert a rosbag2 recording (MCAP or sqlite3) into a LeRobot-layout dataset",
        "robolearn.data.convert.rosbag",
        config="RosbagConvertConfig",
        flags=(Flag("bag", "the rosbag2 directory", field="bag", metavar="BAG"), _OUT,
               Flag("--config", "topic mapping YAML (sets config)", field="config", metavar="FILE")),
        show=_show_path,
    ),
    "bench data": Verb(
        "measure dataset recording and training-window loading throughput against HDF5",
        "robolearn.data.bench",
        config="DataBenchConfig",
        flags=(Flag("--json", "write the JSON results to FILE (sets json_path)", field="json_path", metavar="FILE"),),
    ),
    "train bc": Verb(
        "behaviour cloning of a policy (mlp, diffusion) on a dataset; rerun to resume",
        "robolearn.policies.train",
        config="TrainBCConfig",
        preset_group="train",
        flags=(_DATASET,
               Flag("--policy", "policy type: mlp or diffusion (sets policy)", field="policy", metavar="NAME"),
               Flag("--out", "run directory (sets out)", field="out", metavar="DIR"),
               Flag("--sample-weighting", "none, or progress for RA-BC (sets sample_weighting)",
                    field="sample_weighting", metavar="MODE"),
               Flag("--reward", "reward model checkpoint for RA-BC (sets reward)", field="reward", metavar="DIR")),
        show=lambda r, a: print(f"trained: {r}/checkpoints/last"),
    ),
    "train reward": Verb(
        "train a stage-aware progress reward model on an annotated dataset; rerun to resume",
        "robolearn.rewards.train",
        config="TrainRewardConfig",
        preset_group="reward",
        flags=(_DATASET,
               Flag("--out", "run directory (sets out)", field="out", metavar="DIR"),
               Flag("--steps", "optimizer steps (sets steps)", field="steps", metavar="N", yaml=True)),
        show=lambda r, a: print(f"trained: {r}/checkpoints/last"),
    ),
    "train residual": Verb(
        "RL of a residual policy (PPO or SAC) over a frozen BC base, with a progress or sparse reward; rerun to resume",
        "robolearn.rl.train",
        config="TrainResidualConfig",
        preset_group="residual",
        flags=(Flag("--base", "base policy checkpoint or run directory (sets base)", field="base", metavar="DIR"),
               Flag("--reward", "progress model checkpoint or run directory, code:PATH (a reward program), or sparse "
                    "(sets reward)", field="reward", metavar="DIR"),
               Flag("--algo", "ppo or sac (sets algo)", field="algo", metavar="NAME"),
               Flag("--task", "task (sets task; default: the base's)", field="task", metavar="NAME"),
               Flag("--out", "run directory (sets out)", field="out", metavar="DIR")),
        show=lambda r, a: print(f"trained: {r}/checkpoints/last"),
    ),
    "reward plot": Verb(
        "plot a reward model's predicted progress and stages on recorded episodes (PNG)",
        "robolearn.rewards.plot",
        config="PlotConfig",
        flags=(Flag("--reward", "reward model checkpoint directory (sets reward)", field="reward", metavar="DIR"),
               _DATASET,
               Flag("--episode", "episode index (sets episode)", field="episode", metavar="N", yaml=True),
               Flag("--out", "PNG path (sets out)", field="out", metavar="FILE")),
        show=lambda r, a: print(f"wrote {r}"),
    ),
    "bench reward": Verb(
        "measure progress-model quality (VOC, stage accuracy, failure ranking) and throughput on pick_place",
        "robolearn.rewards.bench",
        config="RewardBenchConfig",
        flags=(Flag("--json", "write the JSON results to FILE (sets json_path)", field="json_path", metavar="FILE"),),
    ),
    "bench residual": Verb(
        "measure residual RL: demo gain, steps to 90 percent success (progress vs sparse, PPO, SAC), throughput",
        "robolearn.rl.bench",
        config="ResidualBenchConfig",
        flags=(Flag("--json", "write the JSON results to FILE (sets json_path)", field="json_path", metavar="FILE"),
               Flag("--quick", "a minutes-long smoke version (sets quick=true)", field="quick")),
    ),
    "bench vlm": Verb(
        "measure the reward-code sandbox and the VLM client (throughput, cache hits); count blocked hostile code",
        "robolearn.rewards.vlm.bench",
        config="VLMBenchConfig",
        flags=(Flag("--json", "write the JSON results to FILE (sets json_path)", field="json_path", metavar="FILE"),),
    ),
    "bench judge": Verb(
        "measure the judge and select checks against sim truth: stall-stage agreement, policy-rank agreement, "
        "selection rank correlation vs sim success alone",
        "robolearn.eval.judge_bench",
        config="JudgeBenchConfig",
        flags=(Flag("--json", "write the JSON results to FILE (sets json_path)", field="json_path", metavar="FILE"),
               Flag("--quick", "smoke budget: a few episodes and steps, figures meaningless (sets quick=true)",
                    field="quick")),
    ),
    "bench ros": Verb(
        "measure the ROS 2 control loop over DDS on loopback: policy node period jitter, state-to-command latency "
        "and CPU at 100 Hz, with a bare relay node as the floor",
        "robolearn.deploy.ros_bench",
        config="RosBenchConfig",
        flags=(Flag("--json", "write the JSON results to FILE (sets json_path)", field="json_path", metavar="FILE"),
               Flag("--policy", "policy checkpoint (sets policy; default: a small MLP trained for the run)",
                    field="policy", metavar="DIR"),
               Flag("--quick", "smoke budget: a few seconds, figures meaningless (sets quick=true)", field="quick")),
    ),
    "eval": Verb(
        "evaluate a policy checkpoint over seeded sim episodes: success with interval, metrics.json, videos",
        "robolearn.eval.sim",
        config="EvalConfig",
        flags=(Flag("--policy", "policy checkpoint directory (sets policy)", field="policy", metavar="DIR"),
               Flag("--task", "task name (sets task; default: the task the policy's dataset was recorded on)",
                    field="task", metavar="NAME"),
               Flag("--episodes", "seeded episodes (sets episodes)", field="episodes", metavar="N", yaml=True),
               Flag("--video", "write mp4s of the first episodes (sets video=true)", field="video")),
        show=_show_eval,
    ),
    "eval-suite": Verb(
        "evaluate policies x tasks x seeds x randomization settings: success table, plots, videos, one HTML report",
        "robolearn.eval.suite",
        config="SuiteConfig",
        flags=(Flag("--policies", "policy checkpoint or run directories, e.g. [runs/bc/a,runs/bc/b] (sets policies)",
                    field="policies", metavar="LIST", yaml=True),
               Flag("--tasks", "tasks, e.g. [lift] (sets tasks; default: each policy's own)", field="tasks",
                    metavar="LIST", yaml=True),
               Flag("--settings", "randomization settings: nominal, physics, visual, heavy (sets settings)",
                    field="settings", metavar="LIST", yaml=True),
               Flag("--episodes", "episodes per cell (sets episodes)", field="episodes", metavar="N", yaml=True),
               Flag("--record", "also record every episode into out/episodes (sets record=true)", field="record"),
               Flag("--out", "output directory (sets out)", field="out", metavar="DIR")),
        show=_show_module("robolearn.eval.suite"),
    ),
    "judge": Verb(
        "judge recorded episodes with a progress model: outcome, process score, where failures stalled; report.html",
        "robolearn.eval.judge",
        config="JudgeConfig",
        flags=(_DATASET,
               Flag("--reward", "progress model checkpoint or run directory (sets reward)", field="reward",
                    metavar="DIR"),
               Flag("--out", "output directory (sets out)", field="out", metavar="DIR"),
               Flag("--episodes", "episode indices, e.g. [0,3] (sets episodes)", field="episodes", metavar="LIST",
                    yaml=True),
               Flag("--json", "print the result as JSON")),
        show=_show_module("robolearn.eval.judge"),
    ),
    "select": Verb(
        "rank candidate policies for deployment without the robot: sim success x OOD of real observations (VSDR)",
        "robolearn.eval.select",
        config="SelectConfig",
        flags=(Flag("--policies", "candidate policy checkpoints or run directories, e.g. [runs/bc/a,runs/bc/b] "
                    "(sets policies)", field="policies", metavar="LIST", yaml=True),
               Flag("--real-dataset", "recorded real-robot episodes (sets real_dataset)", field="real_dataset",
                    metavar="DIR"),
               Flag("--sim-episodes", "seeded sim episodes per policy (sets sim_episodes)", field="sim_episodes",
                    metavar="N", yaml=True),
               Flag("--beta", "weight of the OOD term; 0 ranks by sim success alone (sets beta)", field="beta",
                    metavar="B", yaml=True),
               Flag("--out", "output directory (sets out)", field="out", metavar="DIR"),
               Flag("--json", "print the result as JSON")),
        show=_show_module("robolearn.eval.select"),
    ),
    "ros launch": Verb(
        "run a ROS 2 launch file of ros_ws/ (sim_deploy, deploy, record) without `ros2 launch`: name:=value args",
        "robolearn.deploy.launch",
        function="main",
        raw=True,
    ),
    "bench inference": Verb(
        "measure policy inference latency (per control tick) and batch throughput",
        "robolearn.inference.bench",
        config="InferenceBenchConfig",
        flags=(Flag("--json", "write the JSON results to FILE (sets json_path)", field="json_path", metavar="FILE"),
               Flag("--device", "cpu, cuda or auto (sets device)", field="device", metavar="DEVICE")),
    ),
    "vlm annotate": Verb(
        "stage annotation of a dataset's episodes by a VLM; scored against the expert's boundaries when there are some",
        "robolearn.rewards.vlm.annotate",
        config="VLMAnnotateConfig",
        flags=(_DATASET,
               Flag("--stages", "comma-separated stage names, e.g. reach,grasp,lift; empty: the VLM proposes them "
                    "(sets stages)", field="stages", metavar="LIST"),
               Flag("--camera", "camera (sets camera)", field="camera", metavar="NAME"),
               Flag("--episodes", "episode indices, e.g. [0,3] (sets episodes)", field="episodes", metavar="LIST",
                    yaml=True),
               _RUN_OUT, _VLM_URL, _VLM_MODEL, Flag("--json", "print the report as JSON")),
        show=_show_module("robolearn.rewards.vlm.annotate"),
    ),
    "vlm gvl": Verb(
        "generative progress scoring of shuffled frames (GVL) and each episode's value-order correlation",
        "robolearn.rewards.vlm.gvl",
        config="GVLConfig",
        flags=(_DATASET,
               Flag("--camera", "camera (sets camera)", field="camera", metavar="NAME"),
               Flag("--episodes", "episode indices, e.g. [0,3] (sets episodes)", field="episodes", metavar="LIST",
                    yaml=True),
               _RUN_OUT, _VLM_URL, _VLM_MODEL, Flag("--json", "print the report as JSON")),
        show=_show_module("robolearn.rewards.vlm.gvl"),
    ),
    "vlm reward-code": Verb(
        "VLM-written reward programs: design, sandboxed critic, short residual-RL rounds, feedback; keeps the best",
        "robolearn.rewards.vlm.codegen",
        config="RewardCodeConfig",
        flags=(Flag("--task", "task (sets task; default: the base's)", field="task", metavar="NAME"),
               Flag("--base", "BC base the RL rounds fine-tune (sets base)", field="base", metavar="DIR"),
               _VLM_URL, _VLM_MODEL, _RUN_OUT),
    ),
    "vlm clip-reward": Verb(
        "zero-shot CLIP frame reward (VLM-RM) from a local CLIP: save it and plot it on a dataset's episodes",
        "robolearn.rewards.vlm.clip",
        config="ClipBuildConfig",
        flags=(Flag("--clip", "local CLIP model directory (sets clip)", field="clip", metavar="DIR"),
               Flag("--goal", "goal prompt (sets goal)", field="goal", metavar="TEXT"),
               Flag("--baseline", "baseline prompt (sets baseline)", field="baseline", metavar="TEXT"),
               Flag("--alpha", "baseline projection strength in [0, 1] (sets alpha)", field="alpha", metavar="A",
                    yaml=True),
               _DATASET, _RUN_OUT),
    ),
    "vlm preferences": Verb(
        "label frame pairs with a VLM (RL-VLM-F) and train a Bradley-Terry image reward; rerun to resume",
        "robolearn.rewards.vlm.preference",
        config="PreferenceConfig",
        flags=(_DATASET,
               Flag("--pairs", "pairs to label (sets pairs)", field="pairs", metavar="N", yaml=True),
               _RUN_OUT, _VLM_URL, _VLM_MODEL),
        show=lambda r, a: print(f"{r['labels']['labelled']} labels ({r['labels']['dropped']} dropped), held-out "
                                f"accuracy {r['accuracy']:.3f}, voc {r['voc']:.3f}: {r['checkpoint']}"),
    ),
    "vlm serve": Verb(
        "serve fixture answers as an OpenAI-compatible endpoint on 127.0.0.1 (to try a pipeline without a model)",
        "robolearn.rewards.vlm.server",
        function="serve",
        config="ServeConfig",
        flags=(Flag("--fixtures", "rules file (sets fixtures)", field="fixtures", metavar="FILE"),
               Flag("--port", "port (sets port)", field="port", metavar="N", yaml=True)),
    ),
    "vlm oracle": Verb(
        "serve a sim dataset's ground truth as an OpenAI-compatible endpoint: rehearse every VLM path without a model",
        "robolearn.rewards.vlm.oracle",
        function="serve",
        config="OracleConfig",
        flags=(_DATASET, Flag("--program", "reward program the oracle hands out (sets program)", field="program",
                                metavar="FILE"),
               Flag("--port", "port (sets port)", field="port", metavar="N", yaml=True)),
    ),
    "demo": Verb(
        "run the end-to-end demo pipeline on a simulated task",
        "robolearn.demo",
        config="DemoConfig",
        preset_group="demo",
        flags=(Flag("--quick", "a minutes-long smoke version of the demo (sets quick=true)", field="quick"),),
    ),
}

GROUP_HELP = {
    "vlm": "rewards and annotations from vision-language models (any OpenAI-compatible endpoint)",
    "bench": "benchmarks that print a table and write JSON",
    "train": "train policies and reward models",
    "reward": "inspect reward models",
    "ros": "the ROS 2 bridge: run ros_ws/ launch files (deploy a policy to a real or simulated arm, record)",
    "convert": "convert recorded demonstrations (robomimic HDF5, rosbag2) into a LeRobot-layout dataset",
}


# ------------------------------------------------------------------------------------------------
# parsing


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose verb --help also lists the config keys (importing the verb's module then)."""

    verb: Verb | None = None

    def format_help(self) -> str:
        text = super().format_help()
        if self.verb is not None and self.verb.config is not None:
            text += "\n" + _config_help(self.verb)
        return text


def _config_help(verb: Verb) -> str:
    from robolearn.config import CONFIGS_DIR, describe_fields

    lines = []
    if verb.preset_group:
        group = CONFIGS_DIR / verb.preset_group
        names = sorted(p.stem for p in group.glob("*.yaml")) if group.is_dir() else []
        lines.append(f"presets (configs/{verb.preset_group}/): {', '.join(names) or 'none yet'}")
        lines.append("")
    try:
        cls = getattr(importlib.import_module(verb.module), verb.config)
    except Exception as e:  # help must still print when the verb's module is missing or broken
        lines.append(f"config keys: unavailable ({verb.module}.{verb.config} could not be loaded: {e})")
        return "\n".join(lines) + "\n"
    width = max(40, min(shutil.get_terminal_size((100, 24)).columns, 120))
    lines.append(f"config keys of {cls.__name__} (set as KEY=VALUE; defaults shown):")
    for row in describe_fields(cls):
        if row["section"]:
            lines.append(f"  {row['key']}.*: {row['help']}".rstrip(": "))
            continue
        default = json.dumps(row["default"])
        lines.append(f"  {row['key']} ({row['type']}) = {default}")
        if row["help"]:
            lines += textwrap.wrap(row["help"], width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The `robolearn` argument parser, built from VERBS."""
    parser = _Parser(
        prog="robolearn",
        description="robolearn: train manipulation policies in simulation and deploy them to real arms.",
        epilog="Each verb takes --preset NAME and KEY=VALUE overrides; `robolearn VERB --help` lists its config keys.",
    )
    parser.add_argument("--version", action="version", version=f"robolearn {robolearn.__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=_Parser)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, verb in VERBS.items():
        *group, leaf = name.split()
        where = verbs
        if group:
            if group[0] not in groups:
                group_parser = verbs.add_parser(group[0], help=GROUP_HELP.get(group[0], group[0]))
                groups[group[0]] = group_parser.add_subparsers(
                    dest=f"{group[0]}_verb", metavar="VERB", required=True, parser_class=_Parser
                )
            where = groups[group[0]]
        sub = where.add_parser(leaf, help=verb.help, description=verb.help, add_help=not verb.raw)
        sub.verb = verb
        _add_verb_arguments(sub, verb)
        sub.set_defaults(_verb=name, _parser=sub)
    return parser


def _add_verb_arguments(sub: argparse.ArgumentParser, verb: Verb) -> None:
    if verb.raw:
        sub.add_argument("argv", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments; ARGS --help lists them")
        return
    if verb.config is not None:
        preset_help = "a preset: configs/<group>/NAME.yaml by name, or a path to a YAML file"
        if verb.preset_group:
            preset_help = f"a preset: configs/{verb.preset_group}/NAME.yaml by name, or a path to a YAML file"
        sub.add_argument("-p", "--preset", metavar="NAME", help=preset_help)
        sub.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    for flag in verb.flags:
        dest = flag.option.lstrip("-").replace("-", "_")
        if not flag.option.startswith("-"):
            sub.add_argument(dest, metavar=flag.metavar or dest.upper(), help=flag.help)
        elif flag.metavar:
            sub.add_argument(flag.option, dest=dest, metavar=flag.metavar, help=flag.help)
        else:
            sub.add_argument(flag.option, dest=dest, action="store_true", help=flag.help)
    if verb.config is not None:
        sub.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)


def _overrides(args: argparse.Namespace, extra: list[str], verb: Verb) -> list[str]:
    """Positional overrides, then the verb's flags as overrides (flags win)."""
    out = [*getattr(args, "overrides", []), *extra]
    for flag in verb.flags:
        if flag.field is None:
            continue
        value = getattr(args, flag.option.lstrip("-").replace("-", "_"))
        if flag.metavar and value is not None:
            # JSON strings are YAML: any path survives; a yaml flag's value is parsed (numbers, lists)
            out.append(f"{flag.field}={value if flag.yaml else json.dumps(value)}")
        elif not flag.metavar and value:
            out.append(f"{flag.field}=true")
    return out


def _import(name: str, verb: Verb) -> Any:
    try:
        return importlib.import_module(verb.module)
    except ModuleNotFoundError as e:  # a missing module is an install problem: one line, not a traceback
        missing = e.name or ""
        if verb.module == missing or verb.module.startswith(missing + "."):
            raise RobolearnError(
                f"`robolearn {name}` is not available in this install (no module {verb.module})"
            ) from None
        if not missing.startswith("robolearn"):
            raise RobolearnError(
                f"`robolearn {name}` needs the Python package {missing!r}, which is not installed; run `make venv`"
            ) from None
        raise


# ------------------------------------------------------------------------------------------------
# entry point


def run_verb(name: str, args: argparse.Namespace, overrides: list[str]) -> int:
    """Build the verb's config and call its function; returns the exit code."""
    verb = VERBS[name]
    module = _import(name, verb)
    function = getattr(module, verb.function)
    if verb.raw:
        return int(function(list(args.argv)) or 0)
    if verb.config is None:
        result = function()
    else:
        from robolearn.config import config_to_dict, load_config

        preset = args.preset
        if preset is not None and verb.preset_group and "/" not in preset and not preset.endswith((".yaml", ".yml")):
            preset = f"{verb.preset_group}/{preset}"
        cfg = load_config(getattr(module, verb.config), preset, overrides)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None), end="")
            return 0
        result = function(cfg)
    if verb.show is not None:
        verb.show(result, args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run `robolearn` with `argv` (default sys.argv[1:]); returns the exit code.

    argparse usage errors and --help exit through SystemExit (code 2 and 0) as usual.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(None if argv is None else list(argv))
    verb = VERBS[args._verb]
    if verb.raw:  # the verb parses its own options (argparse leaves those before the first positional in extra)
        args.argv, extra = [*extra, *args.argv], []
    # argparse stops filling the KEY=VALUE positional at the first option, so `demo a=1 --quick b=2`
    # leaves b=2 in `extra`; anything else left over is a real mistake.
    wrong = [x for x in extra if x.startswith("-") or "=" not in x or verb.config is None]
    if wrong:
        hint = ""
        if any(x.startswith("--") and "=" in x for x in wrong):
            hint = "; overrides are written KEY=VALUE without dashes, e.g. num_envs=8"
        args._parser.error(f"unrecognized arguments: {' '.join(wrong)}{hint}")
    try:
        return run_verb(args._verb, args, _overrides(args, extra, verb))
    except RobolearnError as e:
        print(f"robolearn: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `robolearn tasks | head`: stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
