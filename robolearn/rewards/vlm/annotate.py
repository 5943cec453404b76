"""`robolearn vlm annotate`: stage (subtask) annotation of a dataset's episodes by a VLM.

    robolearn vlm annotate --dataset data/lift --stages reach,grasp,lift --vlm.model qwen2.5vl:7b

Each episode is shown as `frames_per_episode` camera frames sampled uniformly (first and last
included), each labelled in the prompt with its frame number and time ("Image 3 is frame 42 (t =
2.10 s)"), and the model names the frame where each stage starts:

    {"stages": [{"name": "reach", "start_frame": 0}, {"name": "grasp", "start_frame": 42}, ...]}

The answer must list the stages in their given order, the first starting at frame 0 and each later one
strictly after the one before, inside the episode. Trailing stages may be left out: an episode that
fails before it grasps is annotated `reach` alone (a VLM cannot annotate the regressions the
scripted expert records, e.g. grasp -> reach after a drop; each stage appears once). An answer that
breaks these rules is re-asked once with the problem quoted (`VLMClient.ask_json`'s `check`). Stage k
then spans start_k .. start_{k+1} - 1 and the last one runs to the episode's last frame; the result is
a `StageAnnotation` with source "vlm". With no `stages` given, the model first proposes 2-8 snake_case
stage names from the task text and a few frames of the first episode.

Where the dataset's annotations come from the scripted expert (source "expert"), the VLM's are scored
against them before anything is written: the mean absolute error of the stage boundaries (the start
frames of stages 2..K, each matched by name to the stage's first start in the expert annotation), in
frames and seconds, overall and per stage.

Writes under `out/` (default runs/vlm_annotate/<dataset name>): config.json, annotations.json (the
format `robolearn annotate --file` reads, so they can be applied again or to a copy),
previous_annotations.json (the annotations the dataset held before this run directory first wrote into
it; `robolearn annotate --file` restores them), vlm_log.jsonl (every prompt and validated answer) and
report.json. With `write` (the default) the annotations then replace the episodes' annotations in the
dataset. Answers are cached by request (`vlm.cache_dir`), so a rerun costs no requests. The API key is
never written anywhere.

The helpers at the bottom (`resolve_camera`, `select_episodes`, `sample_frames`, `map_with_progress`,
`prepare_out`) are shared with `gvl.py`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from robolearn.data.format import DatasetError, atomic_write_bytes, atomic_write_json, to_jsonable
from robolearn.data.stages import StageAnnotation
from robolearn.errors import ConfigError, did_you_mean
from robolearn.rewards.vlm.client import VLMAnswerError, VLMClient, VLMConfig

CAMERA_PREFIX = "observation.images."
PROPOSE_FRAMES = 6
"""frames of the first episode shown when the model proposes the stage names"""
MAX_PROPOSED = 8
STAGE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
T = TypeVar("T")


@dataclass
class VLMAnnotateConfig:
    """What `robolearn vlm annotate` annotates and where it writes."""

    dataset: str = ""
    """dataset directory (LeRobot v3 layout) with at least one camera"""
    stages: list[str] | str = field(default_factory=list)
    """stage names in order, e.g. [reach, grasp, lift] or "reach,grasp,lift"; empty: the VLM proposes them"""
    camera: str = ""
    """camera feature shown to the VLM (`front` or `observation.images.front`); empty: the dataset's first"""
    frames_per_episode: int = 16
    """frames shown per episode, sampled uniformly with the first and last included"""
    episodes: list[int] | None = None
    """episodes to annotate; null or empty: all"""
    write: bool = True
    """write the annotations into the dataset (its previous ones are backed up into `out` first)"""
    out: str = ""
    """run directory; empty: runs/vlm_annotate/<dataset name>"""
    progress: bool = True
    """show a progress bar"""
    vlm: VLMConfig = field(default_factory=VLMConfig)
    """the VLM endpoint and how to talk to it"""

    def __post_init__(self) -> None:
        self.stages = parse_stage_list(self.stages)

    def validate(self) -> None:
        if not self.dataset:
            raise ConfigError("vlm annotate: name the dataset, e.g. --dataset data/lift")
        self.stages = parse_stage_list(self.stages)
        dupes = sorted({s for s in self.stages if self.stages.count(s) > 1})
        if dupes:
            raise ConfigError(f"vlm annotate: stages={self.stages} names {', '.join(dupes)} more than once; "
                              "each stage appears once, in order")
        if len(self.stages) == 1:
            raise ConfigError(f"vlm annotate: stages={self.stages} has one stage, which would span every "
                              "episode; name at least two, or leave stages empty for the VLM to propose them")
        if self.frames_per_episode < 2:
            raise ConfigError(f"vlm annotate: frames_per_episode={self.frames_per_episode} must be at least 2")
        self.vlm.validate()


def parse_stage_list(stages: list[str] | str | None) -> list[str]:
    """Stage names from a list or a comma-separated string ("reach, grasp,lift"), stripped."""
    if stages is None or (isinstance(stages, str) and not stages.strip()):
        return []
    items = stages.split(",") if isinstance(stages, str) else [str(s) for s in stages]
    names = [s.strip() for s in items]
    if any(not s for s in names):
        raise ConfigError(f"vlm annotate: stages={stages!r} has an empty name; write them like "
                          "reach,grasp,lift or [reach, grasp, lift]")
    return names


# ---- one episode -----------------------------------------------------------------------------


def episode_prompt(task: str, stages: list[str], ep: int, frames: np.ndarray, length: int, fps: float,
                   success: bool | None) -> str:
    """The question about one episode whose `frames` (ascending) are sent as images, in order."""
    lines = [f"Task: {task or '(no task text given)'}",
             f"The {len(frames)} images are frames of episode {ep}, one recording of a robot doing this task, "
             f"in time order. The episode has {length} frames (0..{length - 1}) at {fps:g} frames per second.",
             *(f"Image {i + 1} is frame {int(f)} (t = {f / fps:.2f} s)" for i, f in enumerate(frames))]
    if success is not None:
        lines.append(f"The episode was recorded as a {'success' if success else 'failure'}.")
    lines += [f"The task goes through these stages, in this order: {', '.join(stages)}.",
              "For every stage give the frame where it starts: the first stage starts at frame 0, each later "
              "stage strictly after the one before, at one of the frame numbers above or a frame between them. "
              "If the episode ends before reaching a stage, leave out that stage and every stage after it.",
              'Answer as {"stages": [{"name": "' + stages[0] + '", "start_frame": 0}, ...]}.']
    return "\n".join(lines)


def episode_schema(stages: list[str], length: int) -> dict[str, Any]:
    """JSON schema of the answer about an episode of `length` frames."""
    return {"type": "object", "required": ["stages"], "properties": {"stages": {
        "type": "array", "minItems": 1, "maxItems": len(stages),
        "items": {"type": "object", "required": ["name", "start_frame"],
                  "properties": {"name": {"type": "string", "enum": list(stages)},
                                 "start_frame": {"type": "integer", "minimum": 0, "maximum": length - 1}}}}}}


def check_answer(value: dict[str, Any], stages: list[str], length: int) -> None:
    """Raise ValueError (quoted back to the model) unless the stages are a prefix of `stages` in order,
    the first starts at frame 0 and the starts increase strictly inside the episode."""
    items = value["stages"]
    names = [s["name"] for s in items]
    if names != stages[:len(names)]:
        raise ValueError(f"the stages must be {', '.join(stages)} in this order, each once (later ones left out "
                         f"only if the episode never reaches them); got {', '.join(names)}")
    starts = [int(s["start_frame"]) for s in items]
    if starts[0] != 0:
        raise ValueError(f"the first stage {names[0]!r} must start at frame 0, not {starts[0]}")
    for k in range(1, len(starts)):
        if starts[k] <= starts[k - 1]:
            raise ValueError(f"stage {names[k]!r} starts at frame {starts[k]}, not after {names[k - 1]!r} at frame "
                             f"{starts[k - 1]}; start frames must increase strictly")
    if starts[-1] > length - 1:
        raise ValueError(f"stage {names[-1]!r} starts at frame {starts[-1]}, after the episode's last frame "
                         f"{length - 1}")


def to_annotation(value: dict[str, Any], length: int, source: str = "vlm") -> StageAnnotation:
    """A checked answer -> StageAnnotation: stage k ends where k+1 starts, the last at frame length-1."""
    names = [str(s["name"]) for s in value["stages"]]
    starts = [int(s["start_frame"]) for s in value["stages"]]
    ends = [s - 1 for s in starts[1:]] + [length - 1]
    return StageAnnotation(names, starts, ends, source)


def annotate_episode(client: VLMClient, reader, camera: str, ep: int, stages: list[str],
                     frames_per_episode: int) -> dict[str, Any]:
    """Ask about one episode: {episode, length, frames, prompt, answer, annotation}."""
    meta = reader.meta
    length = int(reader.lengths[ep])
    frames = sample_frames(length, frames_per_episode)
    images = reader.video_frames(camera, ep, frames)
    prompt = episode_prompt(meta.task(ep), stages, ep, frames, length, reader.fps, meta.success(ep))
    try:
        answer = client.ask_json(prompt, list(images), schema=episode_schema(stages, length),
                                 check=lambda v: check_answer(v, stages, length))
    except VLMAnswerError as e:
        raise VLMAnswerError(f"episode {ep}: {e}") from None
    ann = to_annotation(answer, length)
    ann.validate(length, f"{meta.root}: episode {ep} VLM annotation")
    return {"episode": ep, "length": length, "frames": frames.tolist(), "prompt": prompt, "answer": answer,
            "annotation": ann}


def propose_stages(client: VLMClient, reader, camera: str, ep: int) -> tuple[list[str], dict[str, Any]]:
    """The model's stage names for the task of episode `ep` (2..8 distinct snake_case names), from the
    task text and a few of the episode's frames; returns (names, log entry)."""
    task = reader.meta.task(ep)
    frames = sample_frames(int(reader.lengths[ep]), PROPOSE_FRAMES)
    prompt = (f"Task: {task}\nThe {len(frames)} images are frames of one recording of a robot doing this task, "
              "in time order.\nSplit the task into its stages (subtasks): 2 to 8 stages that a successful "
              "recording goes through one after another, in that order. Name each with a short snake_case "
              'name (e.g. reach, grasp, lift). Answer as {"stages": ["first_stage", "second_stage", ...]}.')
    schema = {"type": "object", "required": ["stages"], "properties": {"stages": {
        "type": "array", "minItems": 2, "maxItems": MAX_PROPOSED,
        "items": {"type": "string", "pattern": STAGE_NAME.pattern}}}}

    def check(value: dict[str, Any]) -> None:
        names = value["stages"]
        dupes = sorted({s for s in names if names.count(s) > 1})
        if dupes:
            raise ValueError(f"each stage must appear once; {', '.join(dupes)} appears more than once")

    try:
        answer = client.ask_json(prompt, list(reader.video_frames(camera, ep, frames)), schema=schema, check=check)
    except VLMAnswerError as e:
        raise VLMAnswerError(f"proposing the stage names: {e}; or name them with stages=[...]") from None
    return list(answer["stages"]), {"episode": ep, "frames": frames.tolist(), "prompt": prompt, "answer": answer}


# ---- scoring against the expert --------------------------------------------------------------


def boundary_errors(pred: StageAnnotation, ref: StageAnnotation) -> dict[str, int]:
    """|predicted - reference| start frame of each stage after the first that both annotations reach.
    The reference may revisit stages (the expert's regressions after a drop): its first start counts."""
    first: dict[str, int] = {}
    for name, s in zip(ref.names, ref.start_frames):
        first.setdefault(name, int(s))
    return {name: abs(int(s) - first[name]) for name, s in zip(pred.names[1:], pred.start_frames[1:])
            if name in first}


def boundary_summary(errors: dict[int, dict[str, int]], stages: list[str], fps: float) -> dict[str, Any] | None:
    """Mean absolute boundary error over every matched boundary of every compared episode, in frames and
    seconds, overall and per stage; None when no episode could be compared."""
    if not errors:
        return None
    every = [e for per in errors.values() for e in per.values()]
    per_stage = {name: [per[name] for per in errors.values() if name in per] for name in stages}
    per_stage_frames = {k: float(np.mean(v)) for k, v in per_stage.items() if v}
    mean = float(np.mean(every)) if every else None
    return {"reference": "expert", "episodes": len(errors), "boundaries": len(every),
            "mean_frames": mean, "mean_s": None if mean is None else mean / fps,
            "per_stage_frames": per_stage_frames, "per_stage_s": {k: v / fps for k, v in per_stage_frames.items()}}


# ---- files -----------------------------------------------------------------------------------


def annotation_file(anns: dict[int, StageAnnotation], **extra: Any) -> dict[str, Any]:
    """{"episodes": {"<ep>": [{"name", "start", "end"}, ...]}, ...extra}: what
    `robolearn.data.stages.load_annotation_file` reads (it ignores the extra keys)."""
    return {**extra, "episodes": {str(ep): [{"name": n, "start": int(s), "end": int(e)} for n, s, e in
                                            zip(a.names, a.start_frames, a.end_frames)]
                                  for ep, a in sorted(anns.items())}}


def backup_annotations(path: Path, meta, episodes: list[int]) -> None:
    """Save the annotations `episodes` hold now into `path` (the format `load_annotation_file` reads, plus
    each one's source), keeping what an earlier run of the same run directory saved there: a rerun finds
    the VLM's own annotations in the dataset and must not overwrite the originals with them."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    saved = {int(k): v for k, v in old.get("episodes", {}).items()}
    sources = {int(k): v for k, v in old.get("sources", {}).items()}
    unannotated = set(old.get("unannotated", []))
    for ep in episodes:
        if ep in saved or ep in unannotated:
            continue
        ann = meta.stages(ep)
        if ann is None:
            unannotated.add(ep)
        else:
            saved[ep] = annotation_file({ep: ann})["episodes"][str(ep)]
            sources[ep] = ann.source
    atomic_write_json(path, {
        "dataset": str(meta.root.resolve()),
        "note": "stage annotations the dataset held before `robolearn vlm annotate` wrote into it; restore them "
                "with `robolearn annotate --dataset DIR --file previous_annotations.json`",
        "sources": {str(k): v for k, v in sorted(sources.items())}, "unannotated": sorted(unannotated),
        "episodes": {str(k): v for k, v in sorted(saved.items())}})


def read_backup(path: Path) -> dict[int, StageAnnotation]:
    """The annotations `backup_annotations` saved, with their sources (empty when there is no backup)."""
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    sources = doc.get("sources", {})
    return {int(k): StageAnnotation([i["name"] for i in v], [i["start"] for i in v], [i["end"] for i in v],
                                    sources.get(k, "user")) for k, v in doc.get("episodes", {}).items()}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(to_jsonable(r)) + "\n" for r in rows).encode(), fsync=False)


# ---- the run ---------------------------------------------------------------------------------


def run(cfg: VLMAnnotateConfig) -> dict[str, Any]:
    """Annotate the episodes, score them against expert annotations, save, and (write) write them into
    the dataset; returns the report (also saved as out/report.json)."""
    from robolearn.config import config_to_dict
    from robolearn.data.dataset import DatasetReader
    from robolearn.data.writer import DatasetWriter
    from robolearn.rewards.vlm.client import connect

    cfg.validate()
    t0 = time.perf_counter()
    reader = DatasetReader(cfg.dataset)
    meta = reader.meta
    camera = resolve_camera(meta, cfg.camera, "vlm annotate")
    episodes = select_episodes(meta, cfg.episodes)
    known = meta.robolearn.get("stages") or None
    if cfg.write and cfg.stages and known:
        _check_known(cfg.stages, known, meta.root, "stages")
    if not cfg.stages and len({meta.task(ep) for ep in episodes}) > 1:
        raise ConfigError(f"vlm annotate: the episodes of {meta.root} have {len({meta.task(e) for e in episodes})} "
                          "different tasks; name the stages with stages=[...] or annotate one task's episodes at a "
                          "time with episodes=[...]")
    out = prepare_out(cfg.out, "vlm_annotate", meta.root, config_to_dict(cfg))
    client = connect(cfg.vlm)
    log: list[dict[str, Any]] = []

    stages, stages_from = list(cfg.stages), "config"
    if not stages:
        stages, entry = propose_stages(client, reader, camera, episodes[0])
        stages_from = "vlm"
        log.append({"kind": "propose_stages", **entry})
        if cfg.write and known:
            _check_known(stages, known, meta.root, f"the stages {client.cfg.model} proposed")

    results = map_with_progress(client, lambda ep: annotate_episode(client, reader, camera, ep, stages,
                                                                     cfg.frames_per_episode),
                                episodes, "vlm annotate", cfg.progress)
    reader.decoder.close()
    anns = {r["episode"]: r["annotation"] for r in results}
    log += [{"kind": "episode", **{k: v for k, v in r.items() if k != "annotation"}} for r in results]

    # the reference: the dataset's expert annotation, or the one backed up before an earlier run wrote ours
    backup_path = out / "previous_annotations.json"
    if cfg.write:
        backup_annotations(backup_path, meta, episodes)
    backed_up = read_backup(backup_path)
    errors: dict[int, dict[str, int]] = {}
    per_episode = []
    for r in results:
        ep, ann = r["episode"], r["annotation"]
        ref = meta.stages(ep)
        if ref is None or ref.source != "expert":
            ref = backed_up.get(ep)
        err = None
        if ref is not None and ref.source == "expert":
            err = errors[ep] = boundary_errors(ann, ref)
        per_episode.append({"episode": ep, "length": r["length"], "success": meta.success(ep), "frames": r["frames"],
                            "stages": [{"name": n, "start": s, "end": e} for n, s, e in
                                       zip(ann.names, ann.start_frames, ann.end_frames)],
                            "boundary_error_frames": err,
                            "expert_stages": None if err is None else _first_starts(ref)})

    write_jsonl(out / "vlm_log.jsonl", log)
    atomic_write_json(out / "annotations.json",
                      annotation_file(anns, source="vlm", dataset=str(meta.root.resolve()), camera=camera,
                                      model=cfg.vlm.model, stages=stages))
    if cfg.write:
        with DatasetWriter.open(meta.root) as w:
            w.set_stages(anns)
    report = {
        "dataset": str(meta.root.resolve()), "camera": camera, "model": cfg.vlm.model, "base_url": cfg.vlm.base_url,
        "stages": stages, "stages_from": stages_from, "episodes": episodes,
        "frames_per_episode": cfg.frames_per_episode, "fps": reader.fps,
        "boundary_error": boundary_summary(errors, stages, reader.fps),
        "written": cfg.write, "out": str(out),
        "previous_annotations": str(backup_path) if backup_path.is_file() else None,
        "requests": client.stats.requests, "cache_hits": client.stats.cache_hits, "reasks": client.stats.reasks,
        "wall_s": time.perf_counter() - t0,
        "per_episode": per_episode,
    }
    atomic_write_json(out / "report.json", to_jsonable(report))
    return report


def format_report(r: dict[str, Any]) -> str:
    """A few lines for the terminal (the CLI's `show`)."""
    lines = [f"annotated {len(r['episodes'])} episodes of {r['dataset']} ({r['camera']}) with {r['model']}: "
             f"{' > '.join(r['stages'])}" + (" (stages proposed by the model)" if r["stages_from"] == "vlm" else "")]
    be = r["boundary_error"]
    if be is None:
        lines.append("  no expert annotations to compare with")
    elif be["mean_frames"] is not None:
        lines.append(f"  boundary error vs the expert: {be['mean_frames']:.2f} frames ({be['mean_s']:.3f} s), "
                     f"{be['boundaries']} boundaries in {be['episodes']} episodes")
        lines.append("    " + "  ".join(f"{k} {v:.2f} ({be['per_stage_s'][k]:.3f} s)"
                                        for k, v in be["per_stage_frames"].items()))
    if r["written"]:
        lines.append(f"  written into the dataset; the previous annotations are in {r['previous_annotations']}")
    lines.append(f"  {r['out']}/report.json   requests {r['requests']}, cache hits {r['cache_hits']}, "
                 f"re-asks {r['reasks']}")
    return "\n".join(lines)


def show(result: dict[str, Any], args) -> None:
    print(json.dumps(result, indent=2) if getattr(args, "json", False) else format_report(result))


def _first_starts(ann: StageAnnotation) -> dict[str, int]:
    first: dict[str, int] = {}
    for name, s in zip(ann.names, ann.start_frames):
        first.setdefault(name, int(s))
    return first


def _check_known(stages: list[str], known: list[str], root: Path, what: str) -> None:
    unknown = [s for s in stages if s not in known]
    if unknown:
        raise ConfigError(f"vlm annotate: {what} ({', '.join(stages)}) include {', '.join(unknown)}, which "
                          f"{root} does not declare (its stages: {', '.join(known)}); pass stages=[{','.join(known)}] "
                          "or write=false to only save the annotations")


# ---- dataset helpers shared with gvl.py ------------------------------------------------------


def resolve_camera(meta, camera: str, verb: str) -> str:
    """The camera feature key for `camera` ("front" or "observation.images.front"; empty: the first)."""
    keys = meta.video_keys
    if not keys:
        raise DatasetError(f"{verb}: {meta.root} has no camera (no video features); the VLM needs images. "
                           "Record with cameras, e.g. `robolearn collect cameras=[front]`")
    if not camera:
        return keys[0]
    key = camera if camera.startswith(CAMERA_PREFIX) else CAMERA_PREFIX + camera
    if key not in keys:
        short = [k.removeprefix(CAMERA_PREFIX) for k in keys]
        raise ConfigError(f"{verb}: {meta.root} has no camera {camera!r}; it has {', '.join(short)}"
                          + did_you_mean(camera.removeprefix(CAMERA_PREFIX), short))
    return key


def select_episodes(meta, episodes: list[int] | None) -> list[int]:
    """`episodes` checked against the dataset (None or empty: all of them)."""
    n = meta.num_episodes
    if n == 0:
        raise DatasetError(f"{meta.root}: the dataset has no episodes")
    if not episodes:
        return list(range(n))
    bad = [int(e) for e in episodes if not 0 <= int(e) < n]
    if bad:
        raise DatasetError(f"{meta.root}: episodes {bad} do not exist (the dataset has episodes 0..{n - 1})")
    return list(dict.fromkeys(int(e) for e in episodes))


def map_with_progress(client: VLMClient, fn: Callable[[int], T], episodes: list[int], desc: str,
                      progress: bool) -> list[T]:
    """`client.map(fn, episodes)` (bounded concurrency, results in order) under a tqdm bar over episodes."""
    from tqdm import tqdm

    lock = threading.Lock()
    with tqdm(total=len(episodes), desc=desc, unit="ep", disable=not progress) as bar:
        def one(ep: int) -> T:
            r = fn(ep)
            with lock:  # workers finish concurrently
                bar.update(1)
            return r
        return client.map(one, episodes)


def sample_frames(length: int, k: int) -> np.ndarray:
    """(min(k, length),) ascending frame indices spread uniformly over 0..length-1, both ends included."""
    return np.unique(np.round(np.linspace(0, length - 1, max(min(k, length), 1))).astype(np.int64))


def prepare_out(out: str, kind: str, dataset: Path, saved_cfg: dict[str, Any]) -> Path:
    """The run directory (default runs/<kind>/<dataset name>), refusing one that holds a run on another
    dataset (its backups and reports would be mixed up); saves config.json."""
    root = Path(out or f"runs/{kind}/{Path(dataset).resolve().name}")
    cfg_path = root / "config.json"
    if cfg_path.is_file():
        try:
            old = json.loads(cfg_path.read_text()).get("dataset")
        except (ValueError, AttributeError):
            old = None
        if old and Path(old).resolve() != Path(dataset).resolve():
            raise ConfigError(f"{root} holds a run on another dataset ({old}); choose another out=DIR")
    root.mkdir(parents=True, exist_ok=True)
    saved = dict(saved_cfg, dataset=str(Path(dataset).resolve()), out=str(root))
    atomic_write_json(cfg_path, to_jsonable(saved))
    return root
