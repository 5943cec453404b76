"""Video files (H.264 mp4 through PyAV), written atomically: a crash never leaves a half file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from robolearn.errors import RobolearnError


def write_mp4(path: str | Path, frames: np.ndarray | list[np.ndarray], fps: float, crf: int = 23) -> Path:
    """Write RGB uint8 frames (T, H, W, 3) to an H.264 mp4 at `path`; returns the path."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise RobolearnError(f"write_mp4 needs uint8 frames of shape (T, H, W, 3), got {frames.dtype} {frames.shape}")
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:  # yuv420p needs even sizes
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    os.replace(tmp, path)
    return path


def read_mp4(path: str | Path) -> np.ndarray:
    """Decode every frame of a video to (T, H, W, 3) uint8."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def tile(images: np.ndarray, cols: int) -> np.ndarray:
    """(K, H, W, 3) -> one (rows*H, cols*W, 3) mosaic, padding with black."""
    k, h, w, c = images.shape
    rows = -(-k // cols)
    canvas = np.zeros((rows * h, cols * w, c), images.dtype)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        canvas[r * h : (r + 1) * h, q * w : (q + 1) * w] = img
    return canvas


def overlay_text(img: np.ndarray, lines: list[str], ok: bool) -> np.ndarray:
    """Write `lines` on an RGB frame (white on a dark outline); the last line green when `ok`."""
    import cv2

    img = np.ascontiguousarray(img)
    for k, text in enumerate(lines):
        y = 18 + 18 * k
        cv2.putText(img, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        color = (80, 220, 80) if ok and k == len(lines) - 1 else (255, 255, 255)
        cv2.putText(img, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    return img
