"""Compare face detectors on the same 512×512 multi-face images and cores: dlib HOG, dlib's MMOD CNN and the
same CNN run by ONNX Runtime (facegate.engine.mmod_onnx); then detection rates on an LFW sample, HOG vs ONNX.

Canvases: four congress117 headshots (256×256) pasted into one 512×512 image each. All detectors run with one
2× upsampling, as facegate's plan_detection does for images this size. Also checks that the ONNX detector's
boxes agree with dlib's CNN (±1 px) on every canvas, so the speed comparison is between equal outputs.

Run: python bench/detect.py [--canvases 4] [--lfw 300] [--repeats 2]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import dlib
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

from facegate.engine.mmod_onnx import OnnxMmodDetector  # noqa: E402
from facegate.engine.models import cnn_detector_weights  # noqa: E402

UPSAMPLE = 1


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


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


def timed(run, images: list[np.ndarray], repeats: int) -> tuple[float, list[int]]:
    """Best-of-``repeats`` mean ms per image, and the faces found in each image."""
    faces = [len(run(image)) for image in images]  # also warms up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for image in images:
            run(image)
        best = min(best, (time.perf_counter() - start) / len(images))
    return 1000 * best, faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--canvases", type=int, default=4)
    parser.add_argument("--lfw", type=int, default=300, help="LFW images sampled for the detection rates")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    hog = dlib.get_frontal_face_detector()
    cnn = dlib.cnn_face_detection_model_v1(str(cnn_detector_weights()))
    onnx = OnnxMmodDetector()
    images = canvases(args.canvases)

    worst = 0
    for image in images:
        ours = sorted(onnx.run(image, UPSAMPLE), key=lambda d: -d.score)
        theirs = sorted(cnn(image, UPSAMPLE), key=lambda d: -d.confidence)
        if len(ours) != len(theirs):
            sys.exit(f"ONNX found {len(ours)} faces where dlib's CNN found {len(theirs)}")
        for a, b in zip(ours, theirs, strict=True):
            box = (b.rect.left(), b.rect.top(), b.rect.right(), b.rect.bottom())
            worst = max(worst, *(abs(p - q) for p, q in zip((a.left, a.top, a.right, a.bottom), box, strict=True)))

    rows = [
        ("dlib HOG (upsample 1)", lambda im: hog(im, UPSAMPLE)),
        ("dlib MMOD CNN (upsample 1)", lambda im: cnn(im, UPSAMPLE)),
        ("ONNX MMOD (upsample 1)", lambda im: onnx.run(im, UPSAMPLE)),
    ]
    print(f"{len(images)} canvases of 512×512 (4 headshots each), {onnx.threads} threads for ONNX Runtime")
    print(f"ONNX vs dlib CNN boxes: largest coordinate difference {worst} px\n")
    print(f"| detector | ms / image | faces found (of {4 * len(images)}) |")
    print("|---|---:|---:|")
    for name, run in rows:
        ms, faces = timed(run, images, args.repeats)
        print(f"| {name} | {ms:.0f} | {sum(faces)} |")

    paths = random.Random(1).sample(datasets.lfw_paths(), min(args.lfw, len(datasets.lfw_paths())))
    hog_hits = onnx_hits = 0
    for path in paths:
        image = _rgb(path)
        hog_hits += bool(hog(image, UPSAMPLE))
        onnx_hits += bool(onnx.run(image, UPSAMPLE))
    print(f"\nLFW detection rate ({len(paths)} images, 150×150 crops, upsample 1, at least one face):")
    print(f"| detector | rate |\n|---|---:|\n| dlib HOG | {hog_hits / len(paths):.1%} |")
    print(f"| ONNX MMOD | {onnx_hits / len(paths):.1%} |")


if __name__ == "__main__":
    main()
