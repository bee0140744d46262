"""Stored video in, sampled frames out: the container and codec checked, frames decoded one at a time (a
six-hour video never sits in memory) and every ``SAMPLE_INTERVAL_MS`` one handed on as an RGB array.

PyAV's wheel carries FFmpeg, so nothing else is installed to read video. Rekognition's limits apply: MP4, MOV or
AVI containers, H.264 video, at most 10 GB and 6 hours.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facegate.engine.image import working_size

MAX_VIDEO_MS = 6 * 3600 * 1000
# Two frames a second: a face in view for half a second is seen, at a quarter of the detector's work of every
# frame at 8 fps; faces between samples are not reported (Rekognition's timestamps are as coarse).
SAMPLE_INTERVAL_MS = 500
# FFmpeg's demuxer names: MP4 and MOV are one demuxer.
CONTAINERS = {"mov,mp4,m4a,3gp,3g2,mj2": "QuickTime / MOV", "avi": "AVI (Audio Video Interleaved)"}
CODECS = {"h264": "h264"}
# A video whose last frame is this far (or two frame intervals, if longer) short of its declared duration was
# cut off; one whose frames run this far past it declares a false duration.
TRUNCATION_SLACK_MS = 1500
MAX_PIXELS = 7680 * 4320  # 8K: larger frames would hold gigabytes in the decoder's reference frames
DECODER_THREADS = 2


class VideoError(ValueError):
    """The video cannot be analysed: the message says why, for the job's StatusMessage."""


@dataclass(frozen=True)
class VideoMetadata:
    codec: str
    duration_ms: int
    format: str
    frame_rate: float
    width: int
    height: int
    color_range: str  # FULL or LIMITED


class VideoFile:
    """One video file opened for analysis (a context manager). Raises VideoError for what cannot be read."""

    def __init__(self, path: str | Path, max_ms: int | None = MAX_VIDEO_MS) -> None:
        import av

        self.path = Path(path)
        self.max_ms = max_ms
        try:
            self._container = av.open(str(self.path), metadata_errors="ignore")
        except av.error.FFmpegError as exc:
            raise VideoError(
                f"The video could not be opened: {_reason(exc)}. Is it a complete MP4, MOV or AVI file?"
            ) from None
        try:
            self.metadata = self._check()
        except Exception:
            self._container.close()
            raise

    def _check(self) -> VideoMetadata:
        container = self._container
        if container.format.name not in CONTAINERS:
            raise VideoError(
                f"The video's container is {container.format.long_name or container.format.name}; facegate reads "
                "MP4, MOV and AVI."
            )
        if not container.streams.video:
            raise VideoError("The file has no video stream.")
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        if codec not in CODECS:
            raise VideoError(f"The video's codec is {codec}; facegate reads H.264 video only.")
        duration_ms = _duration_ms(container, stream)
        if self.max_ms is not None and duration_ms > self.max_ms:
            raise VideoError(too_long(duration_ms))
        rate = stream.average_rate or stream.guessed_rate or 0
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            raise VideoError("The video stream declares no frame size.")
        if width * height > MAX_PIXELS:
            raise VideoError(f"The video's frames are {width}×{height}; facegate reads video up to 7680×4320.")
        color_range = "FULL" if int(stream.codec_context.color_range or 0) == 2 else "LIMITED"
        return VideoMetadata(
            CODECS[codec], duration_ms, CONTAINERS[container.format.name], float(rate), width, height, color_range
        )

    def frames(self, interval_ms: int = SAMPLE_INTERVAL_MS) -> Iterator[tuple[int, np.ndarray]]:
        """(timestamp in ms, RGB frame) at ``interval_ms`` apart: the first frame at or after each sampling time.
        Frames larger than the engine's working size are reduced to it, as images are."""
        import av

        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = DECODER_THREADS
        width, height = working_size(self.metadata.width, self.metadata.height)
        slack = max(TRUNCATION_SLACK_MS, int(2000 / self.metadata.frame_rate) if self.metadata.frame_rate else 0)
        limit = min(self.metadata.duration_ms + slack, self.max_ms or MAX_VIDEO_MS)
        due = 0
        last = -1
        try:
            for frame in self._container.decode(stream):
                if frame.time is None:
                    continue
                at = int(round(frame.time * 1000))
                if at > limit:
                    raise VideoError(
                        f"The video has frames at {at} ms, past the {self.metadata.duration_ms} ms it declares."
                    )
                last = max(last, at)
                if at < due:
                    continue
                yield at, frame.to_ndarray(format="rgb24", width=width, height=height)
                due += interval_ms * (1 + (at - due) // interval_ms)
        except av.error.FFmpegError as exc:
            raise VideoError(f"The video could not be decoded past {max(last, 0)} ms: {_reason(exc)}.") from None
        if last < 0:
            raise VideoError("The video has no frame that could be decoded.")
        if last < self.metadata.duration_ms - slack:
            raise VideoError(
                f"The video ends at {last} ms of the {self.metadata.duration_ms} ms it declares: it is truncated."
            )

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def too_long(duration_ms: int) -> str:
    return (
        f"The video is {duration_ms / 3_600_000:.2f} hours long; at most {MAX_VIDEO_MS / 3_600_000:g} can be analysed."
    )


def _duration_ms(container, stream) -> int:
    if stream.duration is not None and stream.time_base is not None:
        return int(round(float(stream.duration * stream.time_base) * 1000))
    if container.duration is not None:
        return int(round(container.duration / 1000))  # microseconds (FFmpeg's AV_TIME_BASE)
    if stream.frames and stream.average_rate:
        return int(round(stream.frames / float(stream.average_rate) * 1000))
    raise VideoError("The video declares no duration.")


def _reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(": '", 1)[0] if isinstance(text, str) else "unreadable"
