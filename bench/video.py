"""Stored-video face search: facegate's job vs face_recognition frame by frame, on the same clips in one run.

Clips: a 720p and a 1080p H.264 MP4 (``--seconds`` long, 25 fps, made with PyAV from LFW photos, nothing
committed): four people, each ``--face-px`` wide, walking across the frame in turn and two at a time, one of them
indexed (from a different photo). Both pipelines look at the same sampled frames (every 500 ms, facegate's rate).

  * facegate: StartFaceSearch through the governed operation (gate, audit) and the job runner, which decodes
    with PyAV, detects (int8 MMOD), embeds, follows persons, searches every face of every sampled frame and
    stores and audits each batch. "1 process" is `facegate video search` (one engine, ONNX Runtime's default
    threads); "N workers" is `facegate serve`'s pool (``--workers`` processes, the frames of a batch at once).
  * face_recognition: the usual loop: PyAV decode, every sampled frame to ``face_locations`` (HOG, upsample 1)
    and ``face_encodings``, ``compare_faces`` against the indexed encoding (tolerance 0.6). One process.

Columns: sampled frames ÷ wall time (frames/s), video seconds ÷ wall time (× real time), and recall: the sampled
frames in which the indexed person is in view that the pipeline reported them in.

Install the peer for benchmarking only: ``.venv/bin/pip install --no-deps face_recognition``.
Run:  .venv/bin/python bench/video.py [--seconds 30] [--workers 2] [--face-px 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402
from clips import Appearance, make_clip  # noqa: E402

INTERVAL_MS = 500
PEOPLE = ["George_W_Bush", "Colin_Powell", "Tony_Blair", "Serena_Williams"]


def make_clips(folder: Path, seconds: float, face_px: int) -> tuple[dict[str, Path], Path, list[Appearance]]:
    lfw = datasets.data_dir() / "lfw" / "images"
    photos = {name: sorted((lfw / name).glob("*.jpg")) for name in PEOPLE}
    quarter = seconds / 4
    walks = [
        Appearance(photos["George_W_Bush"][0], 0.0, 2 * quarter, face_px, (0.05, 0.1), (0.6, 0.5)),
        Appearance(photos["Colin_Powell"][0], quarter, 3 * quarter, face_px, (0.9, 0.1), (0.3, 0.6)),
        Appearance(photos["Tony_Blair"][0], 2 * quarter, seconds, face_px, (0.1, 0.7), (0.8, 0.1)),
        Appearance(photos["Serena_Williams"][0], 3 * quarter, seconds, face_px, (0.6, 0.6), (0.1, 0.2)),
        Appearance(photos["George_W_Bush"][2], 3 * quarter, seconds, face_px, (0.95, 0.9), (0.5, 0.1)),
    ]
    clips = {}
    for label, (width, height) in (("720p", (1280, 720)), ("1080p", (1920, 1080))):
        clips[label] = make_clip(folder / f"{label}.mp4", walks, seconds, width=width, height=height, fps=25)
    return clips, photos["George_W_Bush"][1], walks


def in_view(walks: list[Appearance], clip: Path) -> set[int]:
    """The sampled timestamps (ms; the first frame at or after every 500 ms) at which the indexed person is in
    view."""
    from facegate.engine.video import VideoFile

    with VideoFile(clip) as video:
        stamps = [t for t, _ in video.frames(INTERVAL_MS)]
    return {t for t in stamps if any("George_W_Bush" in a.photo.name and a.visible(t / 1000) for a in walks)}


def run_facegate(clip: Path, probe: Path, home: Path, workers: int) -> tuple[float, set[int], int]:
    from facegate.compose import Settings, build
    from facegate.keys import Principal
    from facegate.server.workers import OperationRunner

    facegate = build(Settings(home))
    runner = None
    try:
        operator = Principal.operator("default", actor="bench")
        governed = facegate.governed
        if workers:
            runner = OperationRunner(facegate.service, home, facegate.settings.detector, workers, 4 * workers)
            runner.warm_up()
        else:
            facegate.engine.embedding_model  # load the models before timing  # noqa: B018
        governed.execute(operator, "CreateCollection", {"CollectionId": "bench"})
        governed.execute(operator, "IndexFaces", {"CollectionId": "bench", "Image": {"Bytes": probe.read_bytes()}})
        started = time.perf_counter()
        job = governed.execute(
            operator, "StartFaceSearch", {"Video": {"File": str(clip)}, "CollectionId": "bench"}
        ).result
        ended = facegate.jobs.run(job.job_id, "default")
        wall = time.perf_counter() - started
        if ended.status != "SUCCEEDED":
            sys.exit(f"facegate's job {ended.status}: {ended.status_message}")
        found, token = set(), None
        while True:
            page = governed.execute(
                operator, "GetFaceSearch", {"JobId": job.job_id, **({"NextToken": token} if token else {})}
            ).result
            found |= {p.timestamp_ms for p in page.persons}
            token = page.next_token
            if token is None:
                break
        sampled = (ended.video_metadata["duration_ms"] + INTERVAL_MS - 1) // INTERVAL_MS
        return wall, found, sampled
    finally:
        if runner is not None:
            runner.close()
        facegate.close()


def run_face_recognition(clip: Path, probe: Path) -> tuple[float, set[int], int]:
    import av
    import face_recognition

    known = face_recognition.face_encodings(face_recognition.load_image_file(str(probe)))[0]
    face_recognition.face_locations(face_recognition.load_image_file(str(probe)))  # warm up
    started = time.perf_counter()
    found, sampled, due = set(), 0, 0
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            at = int(round(frame.time * 1000))
            if at < due:
                continue
            due += INTERVAL_MS * (1 + (at - due) // INTERVAL_MS)
            sampled += 1
            image = frame.to_ndarray(format="rgb24")
            locations = face_recognition.face_locations(image, number_of_times_to_upsample=1, model="hog")
            encodings = face_recognition.face_encodings(image, known_face_locations=locations)
            if any(face_recognition.compare_faces(encodings, known, tolerance=0.6)):
                found.add(at)
    return time.perf_counter() - started, found, sampled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--face-px", type=int, default=200)
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="facegate-bench-video-") as tmp:
        folder = Path(tmp)
        clips, probe, walks = make_clips(folder, args.seconds, args.face_px)
        rows = []
        for label, clip in clips.items():
            truth = in_view(walks, clip)
            runs = [
                ("facegate, 1 process", lambda c=clip, h=folder / f"{label}-1": run_facegate(c, probe, h, 0)),
                (
                    f"facegate, {args.workers} workers",
                    lambda c=clip, h=folder / f"{label}-n": run_facegate(c, probe, h, args.workers),
                ),
            ]
            if not args.no_peer:
                runs.append(("face_recognition", lambda c=clip: run_face_recognition(c, probe)))
            for name, run in runs:
                wall, found, sampled = run()
                recall = len(found & truth) / len(truth)
                wrong = len(found - truth)
                rows.append((label, name, sampled, wall, sampled / wall, args.seconds / wall, recall, wrong))
                print(f"  {label} {name}: {wall:.1f} s", file=sys.stderr, flush=True)
    print(
        f"\nface search in stored video: {args.seconds:g} s clips at 25 fps, sampled every {INTERVAL_MS} ms, "
        f"faces {args.face_px} px wide; the indexed person in view in {len(truth)} sampled frames, twice at once in "
        "the last quarter (two photos)\n"
    )
    header = ("clip", "pipeline", "sampled frames", "wall s", "frames/s", "× real time", "recall", "wrong frames")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for label, name, sampled, wall, fps, realtime, recall, wrong in rows:
        print(f"{label} | {name} | {sampled} | {wall:.1f} | {fps:.2f} | {realtime:.2f} | {recall:.1%} | {wrong}")


if __name__ == "__main__":
    main()
