"""Camera streams of a dataset: encode an episode, join episodes into one file, decode frames by time.

Episodes are encoded once (H.264, yuv420p, a keyframe every `gop` frames and no B-frames so that a
random frame costs at most `gop` decodes, as LeRobot does with g=2) and later joined into
many-episode files by copying packets with shifted timestamps: no re-encoding, no quality loss.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from robolearn.data.format import DatasetError


@dataclass
class VideoOptions:
    """How camera streams are encoded."""

    codec: str = "libx264"
    """PyAV encoder: libx264 (H.264), libsvtav1 (AV1, LeRobot's default; slower to encode)"""
    crf: int = 20
    """constant rate factor: lower is better quality and bigger files"""
    gop: int = 2
    """keyframe interval in frames: a random frame decodes at most this many frames"""
    preset: str = "ultrafast"
    """encoder speed preset (libx264: ultrafast..placebo)"""


def encode_episode(path: Path, frames: np.ndarray, fps: int, opts: VideoOptions, key: str) -> None:
    """Encode (T, H, W, 3) uint8 frames to a fresh mp4 at `path` (written to a temp name, then renamed)."""
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise DatasetError(f"camera {key!r}: frames must be uint8 (T, H, W, 3); got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise DatasetError(f"camera {key!r}: {h}x{w} frames cannot be stored as yuv420p video; "
                           "use an even image height and width")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(tmp), mode="w", format="mp4") as out:
        stream = out.add_stream(opts.codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = Fraction(1, fps)
        options = {"crf": str(opts.crf), "g": str(opts.gop), "bf": "0"}
        if opts.codec == "libx264":
            options.update(preset=opts.preset, tune="zerolatency")
        stream.options = options
        stream.codec_context.thread_count = 1  # tiny frames: threads cost more than they give
        import cv2

        for i in range(t):
            # OpenCV's RGB->I420 (BT.601, as swscale) is ~4x cheaper than PyAV's per-frame scaler
            vf = av.VideoFrame.from_ndarray(cv2.cvtColor(frames[i], cv2.COLOR_RGB2YUV_I420), format="yuv420p")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(vf))
        out.mux(stream.encode())
    os.replace(tmp, path)


def concat_videos(inputs: list[Path], lengths: list[int], fps: int, out_path: Path) -> list[float]:
    """Join mp4 files packet by packet into `out_path`; returns each input's start time (s) in it.

    `lengths` are the frame counts of the inputs: input k starts at sum(lengths[:k]) / fps."""
    import av

    tmp = out_path.with_name(f".{out_path.name}.tmp{os.getpid()}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    starts, frame0 = [], 0
    with av.open(str(tmp), mode="w", format="mp4") as out:
        ostream = None
        for path, n in zip(inputs, lengths):
            with av.open(str(path)) as src:
                istream = src.streams.video[0]
                if ostream is None:
                    ostream = out.add_stream_from_template(istream)
                    ostream.time_base = istream.time_base
                shift = int(round(Fraction(frame0, fps) / istream.time_base))
                for pkt in src.demux(istream):
                    if pkt.dts is None:  # the demuxer's end-of-stream flush packet
                        continue
                    pkt.pts, pkt.dts = pkt.pts + shift, pkt.dts + shift
                    pkt.stream = ostream
                    out.mux(pkt)
            starts.append(frame0 / fps)
            frame0 += n
    os.replace(tmp, out_path)
    return starts


def probe_frames(path: Path) -> int:
    """Number of decodable frames in a video file (demuxes packets, decodes nothing)."""
    import av

    try:
        with av.open(str(path)) as c:
            return sum(1 for p in c.demux(c.streams.video[0]) if p.size)
    except (av.error.FFmpegError, IndexError) as e:
        raise DatasetError(f"{path}: not a readable video ({e}); re-record or re-convert this episode") from None


def to_rgb(frame) -> np.ndarray:
    """A decoded frame as (H, W, 3) uint8 RGB. yuv420p goes through OpenCV (BT.601, as swscale):
    PyAV's own rgb24 conversion builds a scaler per frame and costs ~8x more at 84x84."""
    if frame.format.name == "yuv420p":
        import cv2

        return cv2.cvtColor(frame.to_ndarray(format="yuv420p"), cv2.COLOR_YUV2RGB_I420)
    return frame.to_ndarray(format="rgb24")


class VideoDecoder:
    """Decodes frames of many files by timestamp, keeping each file open and decoding forward
    without a seek when the next request follows the last one. One per process (and per thread):
    a DataLoader worker gets its own copy after the fork."""

    def __init__(self, tolerance_s: float = 1e-3) -> None:
        self.tolerance_s = tolerance_s
        self._open: dict[Path, _OpenVideo] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def frames(self, path: Path, timestamps: np.ndarray) -> np.ndarray:
        """(K, H, W, 3) uint8 frames at ascending `timestamps` (s) of the file at `path`."""
        if os.getpid() != self._pid:  # forked: containers opened by the parent are not ours
            self._open, self._pid = {}, os.getpid()
        with self._lock:
            v = self._open.get(path)
            if v is None:
                if len(self._open) >= 16:
                    self._open.pop(next(iter(self._open))).close()
                v = self._open[path] = _OpenVideo(path)
            return v.read(np.asarray(timestamps, np.float64), self.tolerance_s)

    def close(self) -> None:
        for v in self._open.values():
            v.close()
        self._open.clear()

    def __getstate__(self):  # a pickled decoder (DataLoader with spawn) starts with no open files
        return {"tolerance_s": self.tolerance_s}

    def __setstate__(self, state):
        self.__init__(state["tolerance_s"])


class _OpenVideo:
    def __init__(self, path: Path) -> None:
        import av

        try:
            self.container = av.open(str(path))
            self.stream = self.container.streams.video[0]
        except (av.error.FFmpegError, IndexError) as e:
            raise DatasetError(f"{path}: not a readable video ({e}); re-record or re-convert this episode") from None
        # tiny frames: threads cost more than they give. thread_count too, not only thread_type: the AV1
        # decoder (libdav1d) sizes its own thread pool from it (0 = one per CPU), and a DataLoader worker
        # forked from a process that had decoded AV1 could hang for good inside that pool
        self.stream.thread_type = "NONE"
        self.stream.codec_context.thread_count = 1
        self.tb = float(self.stream.time_base)
        self.path = path
        self._iter = None
        self._last_t = -np.inf  # time of the last frame decoded
        self._last = None

    def read(self, ts: np.ndarray, tol: float) -> np.ndarray:
        import av

        out = [None] * len(ts)
        k = 0
        # reuse the last decoded frame (overlapping windows ask for it again)
        while k < len(ts) and self._last is not None and abs(ts[k] - self._last_t) <= tol:
            out[k] = self._last
            k += 1
        if k == len(ts):
            return np.stack(out)
        # a short way ahead: decode forward; otherwise seek to the keyframe before the first frame
        if self._iter is None or not (self._last_t < ts[k] <= self._last_t + 0.25):
            self.container.seek(max(0, int(ts[k] / self.tb)), stream=self.stream, backward=True, any_frame=False)
            self._iter = self.container.decode(self.stream)
        try:
            while k < len(ts):
                frame = next(self._iter)
                t = frame.pts * self.tb
                if t < ts[k] - tol:
                    continue
                self._last_t, self._last = t, to_rgb(frame)
                while k < len(ts) and abs(ts[k] - t) <= tol:
                    out[k] = self._last
                    k += 1
                if k < len(ts) and t > ts[k] + tol:
                    raise DatasetError(f"{self.path}: no frame at t={ts[k]:.4f}s (next frame is at {t:.4f}s); "
                                       "the video and the episode index disagree")
        except StopIteration:
            self._iter = None
            raise DatasetError(f"{self.path}: the video ends before t={ts[k]:.4f}s; the file is truncated or the "
                               "episode index points past it. Re-record or re-convert the episode") from None
        except av.error.FFmpegError as e:
            self._iter = None
            raise DatasetError(f"{self.path}: cannot decode at t={ts[k]:.4f}s ({e}); the file is damaged") from None
        return np.stack(out)

    def close(self) -> None:
        self.container.close()
