"""Disjoint halves of LFW (by person) and UTKFace (by image) as csv: dataset specs, for calibrating fair scores on
one half and auditing or running the ACLU experiment on the other (README, "Fair scores").

Members of Congress also in LFW (congress117/lfw_name_overlap.csv) always go to the B half, where the ACLU
experiment's --overlap removes them from the gallery, so no member's own photos are in the cohort.

Run: .venv/bin/python bench/split_cohort.py OUT_DIR [--seed 0]
then: facegate fairness calibrate --cohort csv:OUT/lfw_a.csv --cohort csv:OUT/utk_a.csv
      facegate fairness audit --dataset csv:OUT/utk_b.csv --out audit
      facegate fairness aclu … --gallery csv:OUT/lfw_b.csv --gallery csv:OUT/utk_b.csv --overlap …
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = datasets.data_dir()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)

    lfw = data / "lfw" / "images"
    overlap = {r["lfw_identity"] for r in csv.DictReader((data / "congress117" / "lfw_name_overlap.csv").open())}
    people = sorted(p.name for p in lfw.iterdir() if p.is_dir())
    rng.shuffle(people)
    side_a = {p for p in people[: len(people) // 2] if p not in overlap}
    for name, in_a in (("lfw_a.csv", True), ("lfw_b.csv", False)):
        with (args.out / name).open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "identity"])
            for person in sorted(people):
                if (person in side_a) == in_a:
                    writer.writerows([str(image), person] for image in sorted((lfw / person).glob("*.jpg")))

    rows = list(csv.DictReader((data / "utkface" / "labels.csv").open()))
    random.Random(args.seed).shuffle(rows)
    half = len(rows) // 2
    for name, part in (("utk_a.csv", rows[:half]), ("utk_b.csv", rows[half:])):
        with (args.out / name).open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "race_name", "gender_name"])
            writer.writerows([str(data / "utkface" / r["path"]), r["race_name"], r["gender_name"]] for r in part)
    print(
        f"LFW: {len(side_a):,} people in A, {len(people) - len(side_a):,} in B; UTKFace: {half:,} / {len(rows) - half:,}"
    )


if __name__ == "__main__":
    main()
