"""Short H.264 videos made of real faces, for the video tests and ``bench/video.py``: photos from FACEGATE_DATA
moved across a plain background, each in view for its own stretch of time. Nothing here is committed but code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Appearance:
    """``photo`` in view from ``start_s`` (inclusive) to ``end_s`` (exclusive), ``size`` px wide, its top-left
    corner moving in a straight line from ``start`` to ``end`` (ratios of the frame)."""

    photo: Path
    start_s: float
    end_s: float
    size: int = 160
    start: tuple[float, float] = (0.1, 0.2)
    end: tuple[float, float] = (0.3, 0.3)

    def visible(self, t: float) -> bool:
        return self.start_s <= t < self.end_s

    def where(self, t: float, width: int, height: int) -> tuple[int, int]:
        f = (t - self.start_s) / max(self.end_s - self.start_s, 1e-9)
        x = self.start[0] + (self.end[0] - self.start[0]) * f
        y = self.start[1] + (self.end[1] - self.start[1]) * f
        return int(x * (width - self.size)), int(y * (height - self.size))


def make_clip(
    path: Path,
    appearances: list[Appearance],
    seconds: float,
    *,
    width: int = 640,
    height: int = 360,
    fps: int = 10,
    container: str = "mp4",
    codec: str = "libx264",
) -> Path:
    """Write the clip; returns ``path``."""
    import av

    photos = {a.photo: Image.open(a.photo).convert("RGB").resize((a.size, a.size)) for a in appearances}
    background = np.full((height, width, 3), (96, 110, 104), dtype=np.uint8)
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "20"}
        for i in range(int(round(seconds * fps))):
            t = i / fps
            canvas = Image.fromarray(background)
            for a in appearances:
                if a.visible(t):
                    canvas.paste(photos[a.photo], a.where(t, width, height))
            frame = av.VideoFrame.from_ndarray(np.asarray(canvas), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
