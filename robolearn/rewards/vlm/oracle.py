"""`robolearn vlm oracle`: a REHEARSAL endpoint that answers every VLM path from a sim dataset's ground truth.

    robolearn vlm oracle --dataset data/pick_place --program my_reward.py     # serves http://127.0.0.1:8000/v1
    robolearn vlm annotate --dataset data/pick_place --vlm.base-url http://127.0.0.1:8000/v1 --vlm.model oracle

It is NOT a model. It speaks the OpenAI chat-completions protocol (`server.FixtureServer`) and computes
each answer from what the scripted expert recorded, so every pipeline (annotate, gvl, preferences,
reward-code) runs end to end on a machine without VLM weights, and the error a pipeline adds by itself
(e.g. annotation boundaries snapped to the sampled frames) is measured with a perfect labeller. Point
the same commands at vLLM or Ollama afterwards; nothing else changes.

How it knows what it is shown: every frame of every episode (every camera, or `camera`) is decoded
once and indexed by a hash of its RGB pixels. The client PNG-encodes the very uint8 frames the
pipelines decode from the same videos, so decoding a request's images gives identical pixels and the
lookup is exact; a frame that is not in the dataset (another dataset, or `vlm.image_format: jpeg`,
which is lossy) is refused with HTTP 422 "oracle: ..." and the client stops with that message. A
filmstrip (preferences with `pair_kind: clips`) is cut into frame-wide tiles and each tile looked up.
Identical frames do occur (the robot at rest); such a frame's progress is the mean over the frames it
could be (within the episode when the request tells which), which is all a perfect observer of the
pixels could say.

Ground-truth progress of frame f, from the expert's stage annotation (segments in time order, a stage
may recur after a regression): in a segment of stage k (of K) spanning frames s..e it is
(k + (f - s) / (e - s + 1)) / K, so it rises continuously into the next stage; in a successful
episode the last segment is stretched to reach 1.0 at the last frame.

What it answers (the request kind is found by `classify_prompt`, from the fixed wording of the
modules' own prompt builders, so the detection follows their text when it changes):
- annotate: each stage's first start in the expert annotation, snapped to the nearest frame number
  shown in the prompt (later than the previous stage's); stages the episode never reached are left out.
- propose_stages: the dataset's stage names.
- gvl: 100 x the true progress of each image after the reference, in the order sent.
- preference_single / preference_analysis: each side's true progress (a filmstrip: the mean over its
  frames); the side further along is preferred, within `tie` of each other -1. The two-stage query's
  analysis is a sentence naming both percentages, and preference_label reads them back from it.
- reward_code: the file `program`, in a ```python block; without one it refuses (it writes no code).

`noise` (a standard deviation in progress units, 1 = the whole task) adds Gaussian noise to every
progress it reports and moves every annotated boundary by noise x (episode length - 1) frames before
snapping, to show how a pipeline degrades with a noisy labeller. The noise is seeded by `seed` and the
request's content, so a request always gets the same answer (as a model at temperature 0), whatever
order concurrent requests arrive in.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np

from robolearn.data.format import DatasetError
from robolearn.data.stages import StageAnnotation
from robolearn.errors import ConfigError
from robolearn.rewards.vlm.server import FixtureServer, Reply, request_images

RequestKind = Literal["annotate", "propose_stages", "gvl", "preference_single", "preference_analysis",
                      "preference_label", "reward_code"]
REJECT_STATUS = 422
"""status of a request the oracle cannot answer. Not 400: the client reads a 400 that mentions images as
"this model does not take images", which would hide the oracle's reason"""

# what the annotate prompt (annotate.episode_prompt) says about the episode it shows
_EPISODE = re.compile(r"frames of episode (\d+), .*? The episode has (\d+) frames")
_SHOWN = re.compile(r"^Image (\d+) is frame (\d+) \(t = ", re.M)
_STAGES = re.compile(r"^The task goes through these stages, in this order: (.*)\.$", re.M)
# the oracle's own analysis sentence (two-stage preferences), read back by the label request
_ANALYSIS = re.compile(r"Image 1 shows the task (\d+(?:\.\d+)?)% done and Image 2 (\d+(?:\.\d+)?)% done")


class Rejected(Exception):
    """A request the oracle cannot answer; its message becomes the HTTP 422 body."""


# ---- ground truth ----------------------------------------------------------------------------------
def frame_progress(ann: StageAnnotation, length: int, stage_names: list[str], success: bool | None) -> np.ndarray:
    """(length,) true progress in [0, 1] of each frame of an episode from its expert stage annotation:
    (stage index + fraction of the way through the segment) / number of stages; a successful episode's
    last segment is stretched so its last frame is 1.0 (see the module docstring)."""
    k_total = len(stage_names)
    out = np.zeros(length, np.float64)
    last = len(ann.names) - 1
    for i, (name, s, e) in enumerate(zip(ann.names, ann.start_frames, ann.end_frames)):
        k = stage_names.index(name)
        f = np.arange(s, e + 1)
        if i == last and success:
            frac = np.ones(len(f)) if e == s else (f - s) / (e - s)
            out[s:e + 1] = k / k_total + (1 - k / k_total) * frac
        else:
            out[s:e + 1] = (k + (f - s) / (e - s + 1)) / k_total
    return out


def first_starts(ann: StageAnnotation) -> dict[str, int]:
    """Each stage's first start frame (a stage the expert revisits after a drop counts once, as
    `annotate.boundary_errors` matches them)."""
    out: dict[str, int] = {}
    for name, s in zip(ann.names, ann.start_frames):
        out.setdefault(name, int(s))
    return out


def snap_boundaries(starts: dict[str, float], stages: list[str], shown: Sequence[int]) -> list[dict[str, Any]]:
    """The annotate answer: stage one at frame 0, each later stage at the shown frame nearest its start
    and after the previous stage's; a stage absent from `starts` (never reached), or with no shown frame
    left after the previous one, ends the list."""
    out: list[dict[str, Any]] = []
    prev = -1
    for name in stages:
        if name not in starts:
            break
        later = [f for f in shown if f > prev]
        if not later:
            break
        start = 0 if not out else min(later, key=lambda f: abs(f - starts[name]))
        out.append({"name": name, "start_frame": int(start)})
        prev = start
    return out


def pixel_key(image: np.ndarray) -> bytes:
    """What frames are indexed by: a hash of the (H, W, 3) uint8 RGB pixels and their shape."""
    img = np.ascontiguousarray(image)
    return hashlib.sha1(f"{img.shape}{img.dtype}".encode() + img.tobytes()).digest()


def decode_data_url(url: str, where: str) -> np.ndarray:
    """A data URL the client sent -> (H, W, 3) uint8 RGB, decoded as `client.encode_image` encoded it."""
    import cv2

    if not url.startswith("data:image/"):
        raise Rejected(f"{where} is a link ({url[:60]}), not an inline frame; the oracle knows only inline frames")
    if not url.startswith("data:image/png;"):
        raise Rejected(f"{where} is {url[5:url.find(';')]}, which is lossy: the oracle recognizes frames by their "
                       "exact pixels, so send them as png (vlm.image_format=png, the default)")
    raw = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
    img = cv2.imdecode(raw, cv2.IMREAD_COLOR)
    if img is None:
        raise Rejected(f"{where} is not a readable png")
    return np.ascontiguousarray(img[..., ::-1])


# ---- which request is this -------------------------------------------------------------------------
def _fixed_lines(*renders: str) -> frozenset[str]:
    """The non-blank lines all renders share: a prompt's fixed wording, whatever its arguments."""
    sets = [{line.strip() for line in r.splitlines() if line.strip()} for r in renders]
    return frozenset(set.intersection(*sets))


def _propose_prompt(task: str, length: int) -> str:
    """The prompt `annotate.propose_stages` builds (it builds it inline), captured with stand-ins for
    the client and the reader so the oracle follows its wording."""
    from robolearn.rewards.vlm.annotate import propose_stages

    class Capture:
        prompt = ""

        def ask_json(self, prompt: str, images, **kw) -> dict[str, Any]:
            Capture.prompt = prompt
            return {"stages": ["first", "second"]}

    reader = SimpleNamespace(meta=SimpleNamespace(task=lambda ep: task), lengths=[length],
                             video_frames=lambda camera, ep, frames: [])
    propose_stages(Capture(), reader, "observation.images.front", 0)
    return Capture.prompt


@functools.cache
def prompt_markers() -> dict[RequestKind, frozenset[str]]:
    """Per request kind, the fixed lines its prompt always holds, rendered from the modules' own prompt
    builders with two different sets of arguments."""
    from robolearn.rewards.vlm.annotate import episode_prompt
    from robolearn.rewards.vlm.codegen import designer_prompt
    from robolearn.rewards.vlm.gvl import gvl_prompt
    from robolearn.rewards.vlm.preference import (
        ANALYSIS_PROMPT,
        ANALYSIS_QUESTIONS,
        CLIP_NOTE,
        LABEL_PROMPT,
        SINGLE_PROMPT,
    )

    def questions(task: str) -> str:  # as preference.ask_preference fills them
        return ANALYSIS_QUESTIONS.format(first="Image 1", second="Image 2", task=task)

    markers: dict[RequestKind, frozenset[str]] = {
        "annotate": _fixed_lines(
            episode_prompt("lift the cube", ["reach", "grasp"], 0, np.array([0, 5, 9]), 10, 10.0, True),
            episode_prompt("", ["a", "b", "c"], 7, np.array([1, 2]), 3, 20.0, None)),
        "propose_stages": _fixed_lines(_propose_prompt("lift the cube", 40),
                                       _propose_prompt("open\nthe drawer", 3)),
        "gvl": _fixed_lines(gvl_prompt("lift the cube", 3), gvl_prompt("", 16)),
        "preference_single": _fixed_lines(
            SINGLE_PROMPT.format(clip_note="", questions=questions("lift the cube")),
            SINGLE_PROMPT.format(clip_note=CLIP_NOTE.format(n=4), questions=questions("open the drawer"))),
        "preference_analysis": _fixed_lines(
            ANALYSIS_PROMPT.format(clip_note="", questions=questions("lift the cube")),
            ANALYSIS_PROMPT.format(clip_note=CLIP_NOTE.format(n=4), questions=questions("open the drawer"))),
        "preference_label": _fixed_lines(
            LABEL_PROMPT.format(questions=questions("lift the cube"), analysis="It is higher."),
            LABEL_PROMPT.format(questions=questions("open the drawer"), analysis="Image 1: open.\nImage 2: shut.")),
        "reward_code": _fixed_lines(
            designer_prompt("Task `lift`: lift the cube.", "obs['a'] (N, 3)", "", 0, 1),
            designer_prompt("Task `open`: open it.\nStages: reach.", "obs['b'] (N,)\nobs['c'] (N, 2)",
                            "the last one fell", 2, 4)),
    }
    empty = [k for k, v in markers.items() if not v]
    if empty:  # a kind without fixed wording would match every request
        raise RuntimeError(f"oracle: the prompts of {', '.join(empty)} have no fixed line to recognize them by")
    return markers


def classify_prompt(text: str) -> RequestKind | None:
    """Which VLM path a prompt comes from: the kind all of whose fixed lines it holds, the most specific
    one when several do (a single-query preference prompt also holds the analysis prompt's lines);
    None for a prompt of none of them."""
    lines = {line.strip() for line in text.splitlines()}
    hits = sorted(((len(fixed), kind) for kind, fixed in prompt_markers().items() if fixed <= lines), reverse=True)
    if not hits or (len(hits) > 1 and hits[0][0] == hits[1][0]):
        return None
    return hits[0][1]


def prompt_text(request: dict[str, Any]) -> str:
    """The text of a request's first user message: the pipeline's prompt (a re-ask repeats it first)."""
    for m in request.get("messages", []):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            parts = [p for p in content or [] if isinstance(p, dict) and p.get("type") == "text"]
            return "\n".join(p.get("text", "") for p in parts)
    return ""


def classify_request(request: dict[str, Any]) -> RequestKind | None:
    """`classify_prompt` of a chat-completions request body."""
    return classify_prompt(prompt_text(request))


# ---- the responder ---------------------------------------------------------------------------------
class OracleResponder:
    """A `FixtureServer` responder answering robolearn's VLM requests from a dataset's ground truth
    (see the module docstring). Thread-safe: it only reads its index after construction."""

    def __init__(self, dataset_dir: str | Path, camera: str | None = None, program: str | Path | None = None,
                 noise: float = 0.0, seed: int = 0, tie: float = 0.02, progress: bool = False):
        from tqdm import tqdm

        from robolearn.data.dataset import DatasetReader
        from robolearn.rewards.vlm.annotate import resolve_camera

        if not noise >= 0:
            raise ConfigError(f"vlm oracle: noise={noise} must be >= 0 (a standard deviation in progress units)")
        if not 0 <= tie < 1:
            raise ConfigError(f"vlm oracle: tie={tie} must be in [0, 1) (progress units)")
        self.noise, self.seed, self.tie = float(noise), int(seed), float(tie)
        self.program = _read_program(program) if program else None
        self.program_path = str(program) if program else None

        reader = DatasetReader(dataset_dir)
        meta = self.meta = reader.meta
        self.name = str(meta.root)
        self.cameras = [resolve_camera(meta, camera, "vlm oracle")] if camera else meta.video_keys
        if not self.cameras:
            resolve_camera(meta, "", "vlm oracle")  # raises: the dataset has no camera
        self.stage_names = list(meta.stage_names)
        not_expert = [ep for ep in range(meta.num_episodes)
                      if (a := meta.stages(ep)) is None or a.source != "expert"]
        if not_expert or not self.stage_names:
            shown = ", ".join(map(str, not_expert[:10])) + (" ..." if len(not_expert) > 10 else "")
            raise DatasetError(f"vlm oracle: {meta.root} episodes {shown or '(all)'} have no stage annotation by the "
                               "scripted expert (source expert), which is the oracle's ground truth; record the "
                               "dataset with `robolearn collect` (a VLM or a person's annotations are not ground "
                               "truth; `robolearn annotate --file previous_annotations.json` restores the expert's)")
        self.lengths = [int(n) for n in reader.lengths]
        self.progress: dict[int, np.ndarray] = {}
        """episode -> (length,) true progress of each frame"""
        self.first_starts: dict[int, dict[str, int]] = {}
        """episode -> each stage's first start frame in the expert annotation"""
        for ep in range(meta.num_episodes):
            ann = meta.stages(ep)
            unknown = [n for n in ann.names if n not in self.stage_names]
            if unknown:
                raise DatasetError(f"vlm oracle: {meta.root} episode {ep} is annotated with stages {unknown} that the "
                                   f"dataset does not declare ({', '.join(self.stage_names)})")
            self.progress[ep] = frame_progress(ann, self.lengths[ep], self.stage_names, meta.success(ep))
            self.first_starts[ep] = first_starts(ann)
        self.index: dict[bytes, list[tuple[int, int]]] = {}
        """pixel_key of a frame -> every (episode, frame) with exactly those pixels"""
        self.frame_shapes = sorted({tuple(meta.features[c].shape[:2]) for c in self.cameras})
        for cam in self.cameras:
            for ep in tqdm(range(meta.num_episodes), desc=f"oracle: index {cam}", unit="ep", disable=not progress):
                frames = reader.video_frames(cam, ep, np.arange(self.lengths[ep]))
                for f, img in enumerate(frames):
                    where = self.index.setdefault(pixel_key(img), [])
                    if (ep, f) not in where:
                        where.append((ep, f))
        reader.decoder.close()
        self._handlers: dict[RequestKind, Callable[[str, list[str], np.random.Generator], str]] = {
            "annotate": self._annotate, "propose_stages": self._propose, "gvl": self._gvl,
            "preference_single": self._preference_single, "preference_analysis": self._preference_analysis,
            "preference_label": self._preference_label, "reward_code": self._reward_code}

    # ---- lookups -------------------------------------------------------------------------------
    def lookup(self, image: np.ndarray) -> list[tuple[int, int]]:
        """Every (episode, frame) of the dataset whose pixels are exactly `image` (H, W, 3) uint8."""
        return list(self.index.get(pixel_key(image), ()))

    def true_progress(self, episode: int, frame: int) -> float:
        """Ground-truth progress in [0, 1] of one frame."""
        return float(self.progress[episode][frame])

    def _frame_progress(self, img: np.ndarray, where: str, episodes: set[int] | None = None) -> float:
        """Progress of a frame: the mean over the frames with its pixels (those of `episodes` if any)."""
        found = self.lookup(img)
        if not found:
            raise Rejected(f"{where} ({img.shape[0]}x{img.shape[1]}) is not a frame of {self.name} "
                           f"(cameras {', '.join(self.cameras)}); the oracle answers only about its own dataset")
        near = [x for x in found if episodes and x[0] in episodes] or found
        return float(np.mean([self.progress[ep][f] for ep, f in near]))

    def _side_progress(self, img: np.ndarray, where: str) -> float:
        """Progress of one side of a preference pair: a frame, or a filmstrip of frames left to right."""
        if self.lookup(img):
            return self._frame_progress(img, where)
        h, w = img.shape[:2]
        for fh, fw in self.frame_shapes:
            if h == fh and w % fw == 0 and w > fw:
                tiles = [img[:, x:x + fw] for x in range(0, w, fw)]
                if all(self.lookup(t) for t in tiles):
                    return float(np.mean([self._frame_progress(t, where) for t in tiles]))
        raise Rejected(f"{where} ({h}x{w}) is neither a frame nor a filmstrip of frames of {self.name} (its frames "
                       f"are {' or '.join(f'{a}x{b}' for a, b in self.frame_shapes)}); the oracle answers only about "
                       "its own dataset")

    def _noisy(self, p: float, rng: np.random.Generator) -> float:
        return float(np.clip(p + rng.normal(0.0, self.noise), 0.0, 1.0)) if self.noise else p

    # ---- answering -----------------------------------------------------------------------------
    def __call__(self, request: dict[str, Any]) -> Reply:
        text = prompt_text(request)
        kind = classify_prompt(text)
        if kind is None:
            return Reply(f"oracle: this request is none of robolearn's VLM prompts (annotate, propose stages, gvl, "
                         f"preferences, reward code), so the rehearsal oracle for {self.name} cannot answer it; it "
                         f"began {text[:80]!r}", status=REJECT_STATUS)
        urls = request_images(request)
        # noise seeded by the request itself: the same request gets the same answer in any arrival order
        digest = hashlib.sha256(json.dumps([text, urls]).encode()).digest()
        rng = np.random.default_rng([self.seed, int.from_bytes(digest[:8], "little")])
        try:
            return Reply(self._handlers[kind](text, urls, rng))
        except Rejected as e:
            return Reply(f"oracle ({kind}): {e}", status=REJECT_STATUS)

    def _images(self, urls: list[str]) -> list[np.ndarray]:
        return [decode_data_url(u, f"image {i + 1}") for i, u in enumerate(urls)]

    def _annotate(self, text: str, urls: list[str], rng: np.random.Generator) -> str:
        m, stages_m = _EPISODE.search(text.replace("\n", " ")), _STAGES.search(text)
        shown = [int(f) for _, f in _SHOWN.findall(text)]
        if m is None or stages_m is None or not shown:
            raise Rejected("could not read the episode, its length, the shown frames or the stage list from the "
                           "annotate prompt (has annotate.episode_prompt's wording changed?)")
        ep, length = int(m.group(1)), int(m.group(2))
        if ep not in self.progress or self.lengths[ep] != length:
            raise Rejected(f"the prompt names episode {ep} of {length} frames; {self.name} has "
                           f"{len(self.lengths)} episodes" + (f" and episode {ep} has {self.lengths[ep]} frames"
                                                             if ep in self.progress else ""))
        images = self._images(urls)
        if len(images) != len(shown):
            raise Rejected(f"the prompt lists {len(shown)} frames but the request holds {len(images)} images")
        for i, (img, f) in enumerate(zip(images, shown)):
            if (ep, f) not in self.lookup(img):
                raise Rejected(f"image {i + 1} is not frame {f} of episode {ep} of {self.name} (cameras "
                               f"{', '.join(self.cameras)}), as the prompt says it is")
        stages = [s.strip() for s in stages_m.group(1).split(",")]
        unknown = [s for s in stages if s not in self.stage_names]
        if unknown:
            raise Rejected(f"stages {', '.join(unknown)} are not stages of {self.name} "
                           f"({', '.join(self.stage_names)}); the oracle knows only the expert's stages")
        truth: dict[str, float] = dict(self.first_starts[ep])
        if self.noise:
            truth = {k: v + rng.normal(0.0, self.noise) * (length - 1) for k, v in truth.items()}
        return json.dumps({"stages": snap_boundaries(truth, stages, shown)})

    def _propose(self, text: str, urls: list[str], rng: np.random.Generator) -> str:
        for i, img in enumerate(self._images(urls)):
            self._frame_progress(img, f"image {i + 1}")  # rejects frames of another dataset
        return json.dumps({"stages": self.stage_names})

    def _gvl(self, text: str, urls: list[str], rng: np.random.Generator) -> str:
        images = self._images(urls)
        if len(images) < 2:
            raise Rejected(f"a GVL request holds the reference frame and the frames to score; this one holds "
                           f"{len(images)} image(s)")
        ref = self.lookup(images[0])
        if not ref:
            self._frame_progress(images[0], "image 1 (the reference)")  # raises with the reason
        episodes = {ep for ep, f in ref if f == 0} or {ep for ep, _ in ref}
        progress = [self._noisy(self._frame_progress(img, f"image {i + 2}", episodes), rng)
                    for i, img in enumerate(images[1:])]
        return json.dumps({"progress": [round(100.0 * p, 2) for p in progress]})

    def _compare(self, urls: list[str], rng: np.random.Generator) -> tuple[str, int]:
        images = self._images(urls)
        if len(images) != 2:
            raise Rejected(f"a preference request holds two images; this one holds {len(images)}")
        a, b = (round(100 * self._noisy(self._side_progress(img, f"image {i + 1}"), rng), 2)
                for i, img in enumerate(images))
        return self._analysis(a, b), self._label(a, b)

    def _analysis(self, a: float, b: float) -> str:
        verdict = ("There is no clear difference." if self._label(a, b) == -1 else
                   f"Image {1 + self._label(a, b)} is further along.")
        return (f"Image 1 shows the task {a:.2f}% done and Image 2 {b:.2f}% done (ground truth of {self.name}, "
                f"read by the rehearsal oracle, not a model). {verdict}")

    def _label(self, a: float, b: float) -> int:
        """a, b: the sides' progress in percent, as the analysis text states them."""
        return -1 if abs(a - b) <= 100 * self.tie else int(b > a)

    def _preference_single(self, text: str, urls: list[str], rng: np.random.Generator) -> str:
        analysis, label = self._compare(urls, rng)
        return json.dumps({"analysis": analysis, "preferred": label})

    def _preference_analysis(self, text: str, urls: list[str], rng: np.random.Generator) -> str:
        return self._compare(urls, rng)[0]

    def _preference_label(self, text: str, urls: list[str], rng: np.random.Generator) -> str:
        m = _ANALYSIS.search(text)
        if m is None:
            raise Rejected("the analysis in this label request is not one the oracle wrote (it reads back the "
                           "percentages of its own analysis answer)")
        return json.dumps({"preferred": self._label(float(m.group(1)), float(m.group(2)))})

    def _reward_code(self, text: str, urls: list[str], rng: np.random.Generator) -> str:
        if self.program is None:
            raise Rejected("the rehearsal oracle cannot write reward code; start it with --program FILE (a "
                           "compute_reward program you wrote) and it hands that program out")
        return (f"The rehearsal oracle hands out {self.program_path} (it writes no code).\n"
                f"```python\n{self.program.rstrip()}\n```\n")


def _read_program(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"vlm oracle: program {path} does not exist; pass a Python file defining "
                          "compute_reward(obs, action)")
    code = path.read_text()
    if "def compute_reward" not in code:
        raise ConfigError(f"vlm oracle: {path} defines no compute_reward(obs, action); the reward-code pipeline "
                          "would find no program in the oracle's answer")
    if "```" in code:
        raise ConfigError(f"vlm oracle: {path} contains ``` and cannot be handed out inside a ```python block")
    return code


# ---- the verb --------------------------------------------------------------------------------------
@dataclass
class OracleConfig:
    """What `robolearn vlm oracle` serves."""

    dataset: str = ""
    """sim dataset recorded by the scripted expert (`robolearn collect`, stage annotated): the ground truth"""
    camera: str = ""
    """camera whose frames it recognizes (`front` or `observation.images.front`); empty: every camera"""
    program: str = ""
    """reward program (a .py defining compute_reward) handed out to reward-code requests; empty: refuses them"""
    noise: float = 0.0
    """std of Gaussian noise on reported progress and boundaries, in progress units (1 = the whole task)"""
    seed: int = 0
    """seed of that noise (mixed with each request's content, so answers repeat)"""
    tie: float = 0.02
    """preference sides closer than this in true progress are labelled -1 (no difference)"""
    port: int = 8000
    """port on 127.0.0.1"""
    model: str = "oracle"
    """model name it serves (pass it as --vlm.model)"""
    latency_s: float = 0.0
    """seconds added to every answer (to rehearse a slow endpoint)"""

    def validate(self) -> None:
        if not self.dataset:
            raise ConfigError("vlm oracle: name the dataset whose ground truth it serves, e.g. --dataset data/lift")
        if not self.noise >= 0:
            raise ConfigError(f"vlm oracle: noise={self.noise} must be >= 0")
        if not 0 <= self.tie < 1:
            raise ConfigError(f"vlm oracle: tie={self.tie} must be in [0, 1)")
        if not 0 <= self.port <= 65535 or self.latency_s < 0:
            raise ConfigError(f"vlm oracle: port={self.port} must be in 0..65535 and latency_s={self.latency_s} >= 0")


def serve(cfg: OracleConfig) -> None:
    """Serve the dataset's ground truth on 127.0.0.1 until interrupted: a rehearsal endpoint, not a model."""
    cfg.validate()
    responder = OracleResponder(cfg.dataset, camera=cfg.camera or None, program=cfg.program or None,
                                noise=cfg.noise, seed=cfg.seed, tie=cfg.tie, progress=True)
    server = FixtureServer(responder, model=cfg.model, port=cfg.port, latency_s=cfg.latency_s)
    server.requests = deque(maxlen=16)  # it records every body (images inline): keep a long rehearsal's memory flat
    noise = f", noise {cfg.noise:g}" if cfg.noise else ""
    print(f"ORACLE REHEARSAL ENDPOINT, NOT A MODEL: every answer is computed from the ground truth of {cfg.dataset} "
          f"({len(responder.lengths)} episodes, expert stage annotations{noise}); serving it as model {cfg.model!r} "
          f"at {server.base_url} (Ctrl-C stops)", flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()
