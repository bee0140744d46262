"""Face detectors side by side, on the same images and the same cores, in one run:

- ``hog``: dlib's HOG detector (facegate's default);
- ``cnn``: dlib's MMOD CNN in int8 on ONNX Runtime, the 2× upsampling folded into its first convolution
  (``engine/mmod_int8.py``);
- ``cnn-float``: the same CNN in float32 on ONNX Runtime with dlib's exact arithmetic (``engine/mmod_onnx.py``);
- ``cnn-dlib``: dlib's own CNN, with ``--dlib`` (seconds per photo; it also checks that ``cnn-float`` gives its
  boxes).

Each detector runs as facegate runs it (``detect``: reduced to 1920×1080's pixel count, one 2× upsampling).

Sets: the four AWS example photos (twelve faces); dlib's testing.xml images, scored against its boxes (a
detection matches a box at IoU ≥ 0.5, one to one); LFW crops (150×150; found = at least one face); 512×512
canvases of four Congress headshots (found = a detection centred in a headshot's quadrant; others are extra);
one AWS photo upscaled to 12 MP. "vs cnn-float" is the share of cnn-float's faces a detector also finds (IoU ≥
0.5), or for the crops, of the images in which cnn-float finds a face. ``--groups``: detection rates by group on
all of UTKFace and Congress. ``--limits``: the smallest face found, per image size.

Timing: every repeat runs each detector over the set in turn, so load from other processes falls on all of
them alike; an image's time is the median over repeats, and a set's the median over its images. ONNX Runtime
uses every core ("cnn, 1 thread": one, as each worker process of `facegate index` does); dlib's HOG one.

Run: python bench/detect.py [--repeats 3] [--lfw 300] [--canvases 25] [--groups] [--limits] [--dlib]
     python bench/detect.py --calibrate   (prints the int8 detector's activation ranges)
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import random
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

from facegate.engine.detect import CnnDetector, HogDetector  # noqa: E402
from facegate.engine.faces import Box  # noqa: E402
from facegate.engine.mmod_int8 import ACTIVATION_RANGES, Int8MmodDetector, activation_ranges  # noqa: E402
from facegate.engine.mmod_onnx import OnnxMmodDetector  # noqa: E402
from facegate.engine.onnx_resnet import available_cores  # noqa: E402

REFERENCE = "cnn-float"
ONE_THREAD = "cnn, 1 thread"  # as in `facegate index` and the server's workers: one process per core
CALIBRATION_PHOTOS = ("2007_007763", "2008_001009", "2008_001322", "2008_002079", "bald_guys")  # not in testing.xml
TWELVE_MP = 12_000_000

Detect = Callable[[np.ndarray], list[tuple[Box, float]]]


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def photos_dir() -> Path:
    return datasets.data_dir() / "photos"


def aws_photos() -> list[tuple[str, np.ndarray]]:
    return [(p.name, _rgb(p)) for p in sorted((photos_dir() / "aws-examples").glob("*.jpg"))]


def testing_xml() -> list[tuple[str, np.ndarray, list[Box]]]:
    """dlib's testing.xml images and their face boxes."""
    folder = photos_dir() / "dlib-examples"
    out = []
    for image in ET.parse(folder / "testing.xml").getroot().iter("image"):
        boxes = []
        for b in image.iter("box"):
            left, top = int(b.get("left")), int(b.get("top"))
            boxes.append(Box(left, top, left + int(b.get("width")), top + int(b.get("height"))))
        out.append((image.get("file"), _rgb(folder / image.get("file")), boxes))
    return out


def canvases(count: int, seed: int = 0) -> list[np.ndarray]:
    """512×512 images of four congress headshots each (a seeded sample, so runs are comparable)."""
    paths = sorted((datasets.data_dir() / "congress117" / "images").rglob("*.jpg"))
    picks = random.Random(seed).sample(paths, 4 * count)
    out = []
    for i in range(count):
        canvas = np.zeros((512, 512, 3), np.uint8)
        for j, path in enumerate(picks[4 * i : 4 * i + 4]):
            head = np.asarray(Image.open(path).convert("RGB").resize((256, 256)))
            canvas[256 * (j // 2) : 256 * (j // 2) + 256, 256 * (j % 2) : 256 * (j % 2) + 256] = head
        out.append(canvas)
    return out


def upscaled(image: np.ndarray, pixels: int) -> np.ndarray:
    factor = (pixels / (image.shape[0] * image.shape[1])) ** 0.5
    size = (round(image.shape[1] * factor), round(image.shape[0] * factor))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def iou(a: Box, b: Box) -> float:
    inner = max(0.0, min(a.right, b.right) - max(a.left, b.left)) * max(
        0.0, min(a.bottom, b.bottom) - max(a.top, b.top)
    )
    return inner / (a.area + b.area - inner) if inner else 0.0


def matched(found: list[Box], truth: list[Box], threshold: float = 0.5) -> int:
    """Detections matched one to one to truth boxes at IoU ≥ threshold, best pairs first."""
    pairs = sorted(((iou(f, t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)), reverse=True)
    used_f, used_t = set(), set()
    for value, i, j in pairs:
        if value >= threshold and i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
    return len(used_t)


def run_all(detectors: dict[str, Detect], images: list[np.ndarray], repeats: int) -> tuple[dict, dict]:
    """(boxes found in each image, seconds per image: the median over repeats) for every detector. Each repeat
    runs every detector over the set in turn (not image by image: ONNX Runtime's threads keep spinning a
    little after a run, and after cnn-float's they slowed the next detector on small images up to 2×)."""
    found: dict[str, list[list[Box]]] = {name: [] for name in detectors}
    times: dict[str, list[list[float]]] = {name: [[] for _ in images] for name in detectors}
    for repeat in range(repeats):
        for name, detect in detectors.items():
            for i, image in enumerate(images):
                start = time.perf_counter()
                boxes = [box for box, _ in detect(image)]
                times[name][i].append(time.perf_counter() - start)
                if repeat == 0:
                    found[name].append(boxes)
    return found, {name: [statistics.median(t) for t in per_image] for name, per_image in times.items()}


def vs_reference(found: dict[str, list[list[Box]]], name: str) -> str:
    reference = found[REFERENCE]
    total = sum(map(len, reference))
    hits = sum(matched(f, r) for f, r in zip(found[name], reference, strict=True))
    return f"{hits}/{total}"


def aws_table(detectors: dict[str, Detect], repeats: int) -> None:
    photos = aws_photos()
    found, times = run_all(detectors, [image for _, image in photos], repeats)
    sizes = ", ".join(f"{image.shape[1]}×{image.shape[0]}" for _, image in photos)
    print(f"\nAWS example photos ({len(photos)}: {sizes}), {repeats} repeats\n")
    print("| detector | faces found (of 12) | per photo | vs cnn-float | ms per photo (each) | median ms per photo |")
    print("|---|---:|---|---:|---|---:|")
    for name in detectors:
        each = " / ".join(f"{1000 * t:.0f}" for t in times[name])
        counts = "+".join(str(len(f)) for f in found[name])
        print(
            f"| {name} | {sum(map(len, found[name]))} | {counts} | {vs_reference(found, name)} | {each} "
            f"| {1000 * statistics.median(times[name]):.0f} |"
        )


def testing_table(detectors: dict[str, Detect], repeats: int) -> None:
    sets = testing_xml()
    found, times = run_all(detectors, [image for _, image, _ in sets], repeats)
    truth = [boxes for *_, boxes in sets]
    total = sum(map(len, truth))
    print(f"\ndlib's testing.xml ({len(sets)} photos, {total} faces, IoU ≥ 0.5), {repeats} repeats\n")
    print("| detector | recall | precision | found | vs cnn-float | median ms per photo |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in detectors:
        hits = sum(matched(f, t) for f, t in zip(found[name], truth, strict=True))
        detections = sum(map(len, found[name]))
        precision = hits / detections if detections else float("nan")
        print(
            f"| {name} | {hits}/{total} ({hits / total:.0%}) | {precision:.0%} | {detections} "
            f"| {vs_reference(found, name)} | {1000 * statistics.median(times[name]):.0f} |"
        )


def lfw_table(detectors: dict[str, Detect], count: int, repeats: int) -> None:
    paths = random.Random(1).sample(datasets.lfw_paths(), min(count, len(datasets.lfw_paths())))
    found, times = run_all(detectors, [_rgb(p) for p in paths], repeats)
    reference = [bool(f) for f in found[REFERENCE]]
    print(f"\nLFW crops ({len(paths)} sampled, 150×150), {repeats} repeats\n")
    print("| detector | images with a face | vs cnn-float | ms per image |")
    print("|---|---:|---:|---:|")
    for name in detectors:
        hits = [bool(f) for f in found[name]]
        agree = sum(h and r for h, r in zip(hits, reference, strict=True))
        print(
            f"| {name} | {sum(hits)}/{len(paths)} ({sum(hits) / len(paths):.1%}) | {agree}/{sum(reference)} "
            f"| {1000 * statistics.median(times[name]):.1f} |"
        )


def canvas_table(detectors: dict[str, Detect], count: int, repeats: int) -> None:
    images = canvases(count)
    found, times = run_all(detectors, images, repeats)
    print(f"\n512×512 canvases of four Congress headshots ({count}, {4 * count} faces), {repeats} repeats\n")
    print("| detector | faces found | extra detections | vs cnn-float | ms per image |")
    print("|---|---:|---:|---:|---:|")
    for name in detectors:
        faces = extra = 0
        for boxes in found[name]:
            quadrants = {
                (int((b.top + b.bottom) / 2 // 256), int((b.left + b.right) / 2 // 256))
                for b in boxes
                if 0 <= (b.top + b.bottom) / 2 < 512 and 0 <= (b.left + b.right) / 2 < 512
            }
            faces += len(quadrants)
            extra += len(boxes) - len(quadrants)
        print(
            f"| {name} | {faces}/{4 * count} | {extra} | {vs_reference(found, name)} "
            f"| {1000 * statistics.median(times[name]):.0f} |"
        )


def large_table(detectors: dict[str, Detect], repeats: int) -> None:
    name, photo = aws_photos()[-1]
    image = upscaled(photo, TWELVE_MP)
    found, times = run_all(detectors, [image], repeats)
    print(f"\n12 MP photo ({name} upscaled to {image.shape[1]}×{image.shape[0]}), {repeats} repeats\n")
    print("| detector | faces found | vs cnn-float | ms per image |")
    print("|---|---:|---:|---:|")
    for det in detectors:
        print(f"| {det} | {len(found[det][0])} | {vs_reference(found, det)} | {1000 * times[det][0]:.0f} |")


def groups_table(detectors: dict[str, Detect]) -> None:
    """Detection rates (at least one face) by group on every UTKFace and Congress image."""
    sets: list[tuple[str, list[tuple[Path, list[str]]]]] = []
    utk = [(row["file"], [row["race_name"], row["gender_name"]]) for row in datasets.utkface_rows()]
    sets.append(("UTKFace (200×200 crops)", utk))
    base = datasets.data_dir() / "congress117"
    with (base / "members.csv").open() as fh:
        congress = [(base / row["photo_file"], [row["ethnicity"], row["gender"]]) for row in csv.DictReader(fh)]
    sets.append(("Congress (256×256 headshots)", [(p, g) for p, g in congress if p.is_file()]))
    names = list(detectors)
    for title, items in sets:
        hits: dict[str, dict[str, list[int]]] = {n: defaultdict(lambda: [0, 0]) for n in names}
        for path, groups in items:
            image = _rgb(path)
            for name in names:
                found = bool(detectors[name](image))
                for group in ("all", *groups):
                    hits[name][group][0] += found
                    hits[name][group][1] += 1
        print(f"\nDetection rate by group, {title}: share of images with a face found\n")
        print("| group | images | " + " | ".join(names) + " |")
        print("|---|---:|" + "---:|" * len(names))
        for group in sorted(hits[names[0]], key=lambda g: (g != "all", g)):
            total = hits[names[0]][group][1]
            rates = " | ".join(f"{hits[n][group][0] / total:.1%}" for n in names)
            print(f"| {group} | {total} | {rates} |")


def limits_table(detectors: dict[str, Detect], faces: int = 8) -> None:
    """The smallest face each detector finds in images of several sizes: Congress headshots scaled so that
    cnn-float's box on them is N px, each alone on a grey image of that size; found = a detection with IoU ≥ 0.4.
    cnn-float is left out (seconds per image)."""
    reference = detectors[REFERENCE]
    timed = {name: detect for name, detect in detectors.items() if name in ("hog", "cnn")}
    heads = []
    for path in sorted((datasets.data_dir() / "congress117" / "images").rglob("*.jpg"))[::61][:faces]:
        head = _rgb(path)
        boxes = [b for b, _ in reference(head)]
        if boxes:
            heads.append((head, max(boxes, key=lambda b: b.area)))
    sizes = [24, 28, 32, 36, 40, 44, 48, 56, 64, 80, 96, 112, 128]
    need = len(heads) - 1
    print(f"\nSmallest face found: N px faces (cnn-float's box), {len(heads)} headshots each alone on a grey image\n")
    print("| image size | " + " | ".join(f"{n}: smallest N with ≥ {need} of {len(heads)} found" for n in timed) + " |")
    print("|---|" + "---:|" * len(timed))
    for width, height in ((640, 480), (1920, 1080), (3840, 2160)):
        smallest: dict[str, str] = {}
        for n in sizes:
            counts = dict.fromkeys(timed, 0)
            for head, box in heads:
                factor = n / box.width
                scaled = Image.fromarray(head).resize(
                    (max(1, round(head.shape[1] * factor)), max(1, round(head.shape[0] * factor))),
                    Image.Resampling.LANCZOS,
                )
                image = np.full((height, width, 3), 128, np.uint8)
                x, y = (width - scaled.width) // 2, (height - scaled.height) // 2
                image[y : y + scaled.height, x : x + scaled.width] = np.asarray(scaled)
                expected = Box(
                    x + box.left * factor, y + box.top * factor, x + box.right * factor, y + box.bottom * factor
                )
                for name in counts.keys() - smallest.keys():
                    counts[name] += any(iou(b, expected) >= 0.4 for b, _ in timed[name](image))
            smallest.update({name: f"{n} px" for name in counts.keys() - smallest.keys() if counts[name] >= need})
            if len(smallest) == len(timed):
                break
        print(f"| {width}×{height} | " + " | ".join(smallest.get(n, f"> {sizes[-1]} px") for n in timed) + " |")


def calibrate() -> None:
    folder = photos_dir() / "dlib-examples"
    ranges = activation_ranges([_rgb(folder / f"{name}.jpg") for name in CALIBRATION_PHOTOS])
    print(f"ACTIVATION_RANGES = {ranges}")
    print(f"committed:           {ACTIVATION_RANGES} ({'the same' if ranges == ACTIVATION_RANGES else 'DIFFERENT'})")


def dlib_check(cnn_float: OnnxMmodDetector, dlib_cnn: CnnDetector) -> None:
    """cnn-float must give dlib's CNN boxes, so the comparison is between equal outputs."""
    worst = 0.0
    for image in [image for _, image, _ in testing_xml()] + canvases(2):
        ours = sorted(cnn_float.detect(image), key=lambda d: -d[1])
        theirs = sorted(dlib_cnn.detect(image), key=lambda d: -d[1])
        if len(ours) != len(theirs):
            sys.exit(f"cnn-float found {len(ours)} faces where dlib's CNN found {len(theirs)}")
        for (a, _), (b, _) in zip(ours, theirs, strict=True):
            worst = max(worst, *(abs(p - q) for p, q in zip(vars(a).values(), vars(b).values(), strict=True)))
    print(f"cnn-float vs cnn-dlib on testing.xml and 2 canvases: largest box coordinate difference {worst:.1f} px")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lfw", type=int, default=300, help="LFW images sampled")
    parser.add_argument("--canvases", type=int, default=25)
    parser.add_argument("--groups", action="store_true", help="detection rates by group on UTKFace and Congress")
    parser.add_argument("--limits", action="store_true", help="the smallest face found per image size")
    parser.add_argument("--dlib", action="store_true", help="also dlib's own CNN (seconds per photo)")
    parser.add_argument(
        "--only", nargs="+", choices=["aws", "testing", "lfw", "canvases", "12mp", "none"], help="these sets"
    )
    parser.add_argument("--detectors", nargs="+", help="only these detectors (default: all)")
    parser.add_argument("--calibrate", action="store_true", help="print the int8 detector's activation ranges")
    args = parser.parse_args()
    if args.calibrate:
        calibrate()
        return

    cnn_float = OnnxMmodDetector()
    named = {"hog": HogDetector(), "cnn": Int8MmodDetector(), ONE_THREAD: Int8MmodDetector(threads=1)}
    named[REFERENCE] = cnn_float
    if args.dlib:
        named["cnn-dlib"] = CnnDetector()
        dlib_check(cnn_float, named["cnn-dlib"])
    detectors: dict[str, Detect] = {
        name: d.detect for name, d in named.items() if not args.detectors or name in args.detectors
    }
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; ONNX Runtime threads: "
        f"{available_cores()}; dlib: 1 thread"
    )
    for image in (aws_photos()[0][1], canvases(1)[0]):  # load every model before timing
        for detect in detectors.values():
            detect(image)
    wanted = set(args.only or ["aws", "testing", "lfw", "canvases", "12mp"])
    if "aws" in wanted:
        aws_table(detectors, args.repeats)
    if "testing" in wanted:
        testing_table(detectors, args.repeats)
    if "lfw" in wanted:
        lfw_table(detectors, args.lfw, args.repeats)
    if "canvases" in wanted:
        canvas_table(detectors, args.canvases, args.repeats)
    if "12mp" in wanted:
        large_table(detectors, args.repeats)
    if args.limits:
        limits_table(detectors)
    if args.groups:
        groups_table(detectors)


if __name__ == "__main__":
    main()
