"""Self-contained HTML reports: one file with every plot, thumbnail and video embedded (base64), so a
report opens offline, survives being mailed or moved, and never points at files that were deleted.

    body = section("Success", table(["policy", "success"], [["bc", "58%"]])) + section("Curves", img(png_path))
    write_page(out / "report.html", "robolearn eval", body)
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.data.format import atomic_write_bytes

STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
th{background:#f4f4f4}figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}
figcaption{font-size:85%;color:#444}.small{color:#666;font-size:90%}.ok{color:#1a7f37}.bad{color:#c62828}"""

escape = html.escape


def data_url(data: bytes | str | Path, mime: str) -> str:
    """bytes, or a file's bytes, as a data: URL."""
    raw = data if isinstance(data, bytes) else Path(data).read_bytes()
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def img(src: bytes | str | Path | np.ndarray, width: str = "100%", alt: str = "") -> str:
    """An embedded image: PNG bytes, a PNG file, or an (H, W, 3) uint8 RGB array (encoded as PNG)."""
    if isinstance(src, np.ndarray):
        import cv2

        ok, buf = cv2.imencode(".png", np.ascontiguousarray(src[..., ::-1]))
        src = buf.tobytes()
    return f'<img src="{data_url(src, "image/png")}" width="{width}" alt="{escape(alt)}">'


def video(path: str | Path, caption: str = "", width: int = 320) -> str:
    """An embedded mp4 with a caption."""
    return (f"<figure><video controls loop muted width='{width}' src='{data_url(path, 'video/mp4')}'></video>"
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def figure(inner: str, caption: str) -> str:
    return f"<figure>{inner}<figcaption>{escape(caption)}</figcaption></figure>"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A table; cells are escaped unless they are `Raw`."""
    def cell(v: Any) -> str:
        return v.html if isinstance(v, Raw) else escape(str(v))
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class Raw:
    """A table cell holding HTML (a link, an image) rather than text."""

    def __init__(self, html_text: str):
        self.html = html_text


def section(title: str, body: str) -> str:
    return f"<h2>{escape(title)}</h2>\n{body}\n"


def write_page(path: str | Path, title: str, body: str) -> Path:
    """Write the page atomically and return its path."""
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>\n{body}</body></html>")
    path = Path(path)
    atomic_write_bytes(path, page.encode())
    return path
