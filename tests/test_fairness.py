"""The fairness audit: metrics against hand-computed cases, datasets, and small real runs end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from facegate.engine.similarity import calibration_table
from facegate.fairness import metrics
from facegate.fairness.aclu import run_aclu
from facegate.fairness.audit import audit_embedded, run_audit
from facegate.fairness.commands import fairness_app
from facegate.fairness.datasets import Dataset, DatasetError, Record, load_dataset
from facegate.fairness.embeddings import OK, EmbeddedDataset, Reporter
from facegate.fairness.metrics import Grouping, Rate

from .conftest import DATA

UTKFACE = DATA / "utkface"
CONGRESS = DATA / "congress117"


# Intervals and ratios


def test_clopper_pearson_matches_published_values():
    assert metrics.clopper_pearson(5, 10) == pytest.approx((0.18709, 0.81291), abs=1e-5)  # textbook table
    assert metrics.clopper_pearson(1, 10) == pytest.approx((0.0025286, 0.4450161), abs=1e-6)
    # closed forms at the edges: (1 - alpha/2)^(1/n) and its mirror
    assert metrics.clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** (1 / 10)))
    assert metrics.clopper_pearson(10, 10) == pytest.approx((0.025 ** (1 / 10), 1.0))
    with pytest.raises(ValueError):
        metrics.clopper_pearson(3, 0)


def test_zero_false_matches_is_a_bound_not_zero():
    none_seen = Rate(0, 300)
    assert none_seen.value == 0.0
    assert none_seen.rule_of_three == pytest.approx(0.01)
    assert none_seen.to_json()["upper95_rule_of_three"] == pytest.approx(0.01)
    assert none_seen.interval == pytest.approx((0.0, 0.0122210), abs=1e-6)  # two-sided CP is a little wider
    assert Rate(1, 300).rule_of_three is None
    assert Rate(0, 2).rule_of_three == 1.0  # 3/2 would be no bound at all
    assert "upper95_rule_of_three" not in Rate(1, 300).to_json()


def test_disparity_ratios_with_a_zero_count_group():
    rates = {"A": Rate(10, 1000), "B": Rate(1, 1000), "C": Rate(0, 1000)}
    out = metrics.disparity(rates)
    # C counts at 3/1000; the maximum is over observed rates only
    assert out["max_group"] == "A" and out["min_group"] == "B"
    assert out["max_over_min"] == pytest.approx(10.0)
    assert out["max_over_geomean"] == pytest.approx(0.01 / (0.01 * 0.001 * 0.003) ** (1 / 3))
    assert out["zero_count_groups"] == ["C"]


def test_disparity_without_errors_or_with_an_uninformative_zero_group():
    assert metrics.disparity({"A": Rate(0, 50), "B": Rate(0, 80)})["max_over_geomean"] is None
    # B's bound 3/100 is above A's observed 0.001: no honest ratio can be given
    out = metrics.disparity({"A": Rate(1, 1000), "B": Rate(0, 100)})
    assert out["max_group"] == "A" and out["max_over_min"] is None
    assert metrics.disparity({"A": Rate(3, 10)})["max_over_min"] is None


def test_fpir_grows_with_the_gallery():
    assert metrics.fpir(1e-5, 1) == pytest.approx(1e-5)
    assert metrics.fpir(2e-6, 25_000) == pytest.approx(1 - (1 - 2e-6) ** 25_000)
    assert metrics.fpir(1e-4, 1_000_000) > 0.99


# Per-group rates on synthetic embeddings whose distances are known


def _simplex(axes: range, side: float, offset_axis: int) -> np.ndarray:
    """Points whose pairwise distances all equal ``side``, far (10) from any other cluster."""
    points = np.zeros((len(axes), 128))
    for row, axis in enumerate(axes):
        points[row, axis] = side / math.sqrt(2)
        points[row, offset_axis] = 10.0
    return points


def _clusters() -> tuple[np.ndarray, list[str]]:
    """A: 4 faces 0.30 apart (match even at similarity 99); B: 0.45 apart (match at 80 and 90, not at 95);
    C: 1.0 apart (never match). Groups are 10 apart."""
    embeddings = np.vstack(
        [_simplex(range(0, 4), 0.30, 20), _simplex(range(4, 8), 0.45, 21), _simplex(range(8, 12), 1.0, 22)]
    )
    return embeddings.astype(np.float32), ["A"] * 4 + ["B"] * 4 + ["C"] * 4


def test_fmr_per_group_and_cell_counts_on_known_distances():
    embeddings, groups = _clusters()
    grouping = Grouping("g", ["A", "B", "C"], np.array([["A", "B", "C"].index(g) for g in groups]))
    ids = metrics.identity_codes([None] * 12)
    scan = metrics.scan_pairs(embeddings, ids, [grouping], block=5)  # blocks smaller than the data on purpose
    assert scan.impostor_pairs == 66
    assert scan.group_impostor_hist["g"].sum(axis=1).tolist() == [6, 6, 6]
    pi, pj, pd = metrics.close_impostor_pairs(embeddings, ids, 0.6, block=5)
    assert len(pd) == 12 and (pi < pj).all()
    counts = metrics.within_group_counts(grouping, pi, pj, pd, [0.6, 0.44, 0.31, 0.29])
    assert counts.tolist() == [[6, 6, 6, 0], [6, 0, 0, 0], [0, 0, 0, 0]]
    cells = metrics.cell_counts(grouping, pi, pj, pd, 0.6)
    assert cells.tolist() == [[6, 0, 0], [0, 6, 0], [0, 0, 0]]
    assert metrics.cell_trials(grouping, *scan.genuine_pairs[:2]).tolist() == [[6, 16, 16], [16, 6, 16], [16, 16, 6]]


def test_distance_at_fmr_is_the_largest_edge_within_the_target():
    hist = np.zeros(metrics.N_BINS, dtype=np.int64)
    hist[[10, 20, 30, 40]] = [1, 9, 90, 900]  # 1000 impostor distances
    assert metrics.distance_at_fmr(hist, 1e-3) == pytest.approx(20 * metrics.BIN)  # 1 of 1000 below it
    assert metrics.distance_at_fmr(hist, 1e-2) == pytest.approx(30 * metrics.BIN)
    assert metrics.distance_at_fmr(hist, 1e-4) == pytest.approx(10 * metrics.BIN)  # nothing below it


def _embedded(embeddings: np.ndarray, records: list[Record], dimensions) -> EmbeddedDataset:
    n = len(records)
    status = np.where(np.isnan(embeddings[:, 0]), 1, OK).astype(np.int8)
    dataset = Dataset("csv:synthetic.csv", "csv", Path("/synthetic"), records, "made up", dimensions)
    full = np.full(n, 50.0)
    return EmbeddedDataset(
        dataset,
        calibration_table()["model_version"],
        embeddings,
        status,
        full,
        full,
        full,
        np.zeros((n, 4)),
        np.ones((n, 2)),
        np.zeros((n, 3)),
        ["0" * 64] * n,
        "i" * 64,
        "d" * 64,
        Path("/synthetic/cache.npz"),
        False,
    )


def test_audit_reads_each_groups_fmr_at_the_global_thresholds():
    embeddings, groups = _clusters()
    records = [Record(Path(f"/synthetic/{i}.jpg"), None, {"group": g}) for i, g in enumerate(groups)]
    report = audit_embedded(_embedded(embeddings, records, (("group",),)), replicates=50)
    points = {p["name"]: p for p in report["operating_points"]}
    assert points["similarity 80"]["fmr"]["count"] == 12 and points["similarity 80"]["fmr"]["trials"] == 66
    assert points["similarity 99"]["fmr"]["count"] == 6
    (dimension,) = report["dimensions"]
    at = {p["name"]: p["groups"] for p in dimension["operating_points"]}
    assert [at["similarity 80"][g]["fmr"]["count"] for g in "ABC"] == [6, 6, 0]
    assert [at["similarity 90"][g]["fmr"]["count"] for g in "ABC"] == [6, 6, 0]
    assert [at["similarity 95"][g]["fmr"]["count"] for g in "ABC"] == [6, 0, 0]
    assert at["similarity 99"]["C"]["fmr"]["upper95_rule_of_three"] == pytest.approx(0.5)
    assert at["similarity 80"]["A"]["fmr"]["bootstrap95"] == [1.0, 1.0]  # every resample still all matches
    cross = dimension["operating_points"][0]["cross"]
    assert cross["false_matches"] == [[6, 0, 0], [0, 6, 0], [0, 0, 0]]
    assert cross["fmr"][0][1] == 0.0 and cross["impostor_pairs"][0][1] == 16
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN anywhere


def test_identities_give_fnmr_and_are_not_counted_as_impostors():
    embeddings, groups = _clusters()
    # In C, faces 8 and 9 are one person: their 1.0 distance is a genuine pair that never matches.
    identities = [f"p{i}" for i in range(12)]
    identities[9] = "p8"
    records = [Record(Path(f"/synthetic/{i}.jpg"), identities[i], {"group": g}) for i, g in enumerate(groups)]
    embeddings = np.vstack([embeddings, np.full((1, 128), np.nan, dtype=np.float32)])  # an image without a face
    records.append(Record(Path("/synthetic/12.jpg"), "p12", {"group": "C"}))
    report = audit_embedded(_embedded(embeddings, records, (("group",),)), replicates=50)
    assert report["pairs"]["impostor"] == 65 and report["pairs"]["genuine"] == 1
    (dimension,) = report["dimensions"]
    c = dimension["groups"]["C"]
    assert c["images"] == 5 and c["detected"] == 4 and c["impostor_pairs"] == 5 and c["genuine_pairs"] == 1
    assert c["detection_failure"]["count"] == 1
    eighty = dimension["operating_points"][0]["groups"]["C"]
    assert eighty["fnmr"]["count"] == 1 and eighty["fnmr"]["trials"] == 1
    assert "fnmr" not in dimension["operating_points"][0]["groups"]["A"]


def test_the_same_photograph_twice_is_counted_and_reported():
    embeddings, groups = _clusters()
    embeddings = np.vstack([embeddings, embeddings[8:9]])  # C's first photo listed again as another person
    records = [Record(Path(f"/synthetic/{i}.jpg"), None, {"group": g}) for i, g in enumerate([*groups, "C"])]
    report = audit_embedded(_embedded(embeddings, records, (("group",),)), replicates=50)
    assert report["pairs"]["near_identical_impostor_pairs"] == 1
    (dimension,) = report["dimensions"]
    assert dimension["groups"]["C"]["near_identical_pairs"] == 1
    strict = dimension["operating_points"][3]["groups"]["C"]
    assert strict["fmr"]["count"] == 1 and strict["fmr"]["trials"] == 10
    assert strict["fmr_excluding_near_identical"]["count"] == 0


def test_bootstrap_over_subjects():
    subjects = np.arange(4)
    all_close = np.array([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])
    everything = metrics.bootstrap_fmr(subjects, all_close[:, 0], all_close[:, 1], np.zeros(6), [0.5], replicates=200)
    assert everything.tolist() == [[1.0, 1.0]]
    one_pair = metrics.bootstrap_fmr(subjects, np.array([0]), np.array([1]), np.zeros(1), [0.5], replicates=500)
    low, high = one_pair[0]
    assert low == 0.0 and high > 1 / 6  # the pair's two subjects are often left out, or drawn twice


# Dataset specs


def test_dataset_specs_name_what_is_wrong(tmp_path):
    with pytest.raises(DatasetError, match="lfw:DIR, utkface:DIR, congress:DIR or csv:LABELS.csv"):
        load_dataset("photos")
    with pytest.raises(DatasetError, match="not a folder"):
        load_dataset(f"utkface:{tmp_path / 'absent'}")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,group\na.jpg,x\n")
    with pytest.raises(DatasetError, match="lacks the column"):
        load_dataset(f"csv:{labels}")
    labels.write_text("path,group\na.jpg,x\n")
    with pytest.raises(DatasetError, match="missing"):
        load_dataset(f"csv:{labels}")


def test_csv_spec_reads_identities_and_labels(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / "img" / name).write_bytes(b"x")
    (tmp_path / "labels.csv").write_text(
        "path,identity,skin,sex\nimg/a.jpg,ann,dark,female\nimg/b.jpg,ann,dark,female\nimg/c.jpg,,light,\n"
    )
    dataset = load_dataset(f"csv:{tmp_path / 'labels.csv'}")
    assert [r.identity for r in dataset.records] == ["ann", "ann", None]
    assert dataset.records[0].path == tmp_path / "img" / "a.jpg"
    assert dataset.records[2].labels == {"skin": "light"}  # an empty cell is unknown, not a group
    assert dataset.dimensions == (("skin",), ("sex",), ("skin", "sex"))
    assert dataset.group_of(dataset.records[0], ("skin", "sex")) == "dark / female"
    assert dataset.group_of(dataset.records[2], ("skin", "sex")) is None


def test_utkface_labels_from_file_names(tmp_path):
    for name in ("25_1_2_20170116174525125.jpg.chip.jpg", "61_0_0_20170117191501547.jpg.chip.jpg"):
        (tmp_path / name).write_bytes(b"x")
    dataset = load_dataset(f"utkface:{tmp_path}")
    labels = sorted((r.labels for r in dataset.records), key=lambda x: x["age_band"])
    assert labels == [
        {"race_name": "Asian", "gender_name": "female", "age_band": "18-29"},
        {"race_name": "White", "gender_name": "male", "age_band": "60+"},
    ]
    assert not dataset.has_identities


def test_real_dataset_specs():
    if not (DATA / "lfw" / "manifest.csv").exists() or not (CONGRESS / "members.csv").exists():
        pytest.skip(f"real face data not found at {DATA}: set FACEGATE_DATA to the shared data folder")
    lfw = load_dataset(f"lfw:{DATA / 'lfw'}")
    assert len(lfw.records) == 7701 and lfw.has_identities
    assert {r.labels.get("gender") for r in lfw.records} == {"male", "female", None}
    congress = load_dataset(f"congress:{CONGRESS}")
    assert len(congress.records) == 535 and congress.records[0].identity == "Y000033"
    assert set(congress.records[0].labels) == {"ethnicity", "gender", "party"}


# End to end on real faces


@pytest.fixture(scope="module")
def small_utkface(tmp_path_factory) -> Path:
    """Six real UTKFace images per race × sex cell (60), as a utkface: folder of links."""
    if not (UTKFACE / "labels.csv").exists():
        pytest.skip(f"UTKFace not found at {UTKFACE}: set FACEGATE_DATA to the shared data folder")
    root = tmp_path_factory.mktemp("utkface")
    (root / "images").mkdir()
    with (UTKFACE / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    chosen, seen = [], {}
    for row in rows:
        cell = (row["race_name"], row["gender_name"])
        if seen.get(cell, 0) < 6:
            seen[cell] = seen.get(cell, 0) + 1
            chosen.append(row)
            (root / row["path"]).symlink_to(UTKFACE / row["path"])
    with (root / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return root


class _Notes(Reporter):
    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)


def test_audit_end_to_end_on_real_utkface_faces(small_utkface, tmp_path_factory):
    data = tmp_path_factory.getbasetemp() / "fairness-data"
    out = tmp_path_factory.mktemp("audit")
    report = run_audit(f"utkface:{small_utkface}", out, data, workers=2)
    written = json.loads((out / "report.json").read_text())
    assert written["model"]["weights_sha256"] == calibration_table()["weights_sha256"]
    assert written["facegate_version"] and written["dataset"]["dataset_sha256"] == report["dataset"]["dataset_sha256"]
    detected = written["detection"]["detected"]
    assert detected >= 50  # facegate finds most of these 200-px chips
    assert written["pairs"]["impostor"] == detected * (detected - 1) // 2
    by_name = {d["name"]: d for d in written["dimensions"]}
    race = by_name["race_name"]
    assert sorted(race["groups"]) == ["Asian", "Black", "Indian", "Others", "White"]
    assert all(g["images"] == 12 for g in race["groups"].values())
    assert len(by_name["race_name × gender_name"]["groups"]) == 10
    points = [p["name"] for p in written["operating_points"]]
    assert points[:4] == ["similarity 80", "similarity 90", "similarity 95", "similarity 99"]
    for group in race["groups"]:
        fmr = [p["groups"][group]["fmr"] for p in race["operating_points"][:4]]
        assert [f["count"] for f in fmr] == sorted((f["count"] for f in fmr), reverse=True)  # stricter, fewer
    # 1:N measured: with every other face as the gallery, the probes' mean false candidates per gallery face is
    # the overall FMR (each impostor pair is a false candidate of both its faces' searches).
    curves = race["curves"]
    at_80 = curves["similarity"].index(80.0)
    sizes = {g: race["groups"][g]["detected"] for g in race["groups"]}
    mean = sum(curves["candidates_per_face"][g][at_80] * n for g, n in sizes.items()) / sum(sizes.values())
    assert mean == pytest.approx(written["operating_points"][0]["fmr"]["rate"], rel=1e-9)
    assert curves["candidates_per_face"]["Asian"][0] is None  # similarity 0: looser than any audited threshold
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    summary = (out / "summary.md").read_text()
    assert "## By race_name × gender_name" in summary and "FMR @ similarity 80" in summary
    notes = _Notes()
    run_audit(f"utkface:{small_utkface}", tmp_path_factory.mktemp("again"), data, reporter=notes)
    assert any("reusing stored embeddings" in n for n in notes.notes)
    assert list((data / "fairness").glob("embeddings-dlib-resnet-v1-*.npz"))


def test_cli_prints_one_line_errors(tmp_path):
    result = CliRunner().invoke(fairness_app, ["audit", "--dataset", "nowhere", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("error: dataset 'nowhere' is not a dataset spec")


def test_aclu_counts_false_matches_and_honours_the_overlap(small_utkface, tmp_path):
    if not (CONGRESS / "members.csv").exists():
        pytest.skip(f"congress117 not found at {CONGRESS}: set FACEGATE_DATA to the shared data folder")
    with (CONGRESS / "members.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    picked = [r for r in rows if r["ethnicity"] != "white-american"][:3] + [
        r for r in rows if r["ethnicity"] == "white-american"
    ][:3]
    members = tmp_path / "members.csv"
    with members.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(picked)
    # The gallery: the 60 UTKFace faces plus the first two members' own photos under their names; only the
    # first is declared in the overlap file, so the second is found as a (wrongly counted) "false" match.
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    lines = ["path,identity"]
    for k, row in enumerate(picked[:2]):
        (gallery / f"m{k}.jpg").symlink_to(CONGRESS / row["photo_file"])
        lines.append(f"m{k}.jpg,{row['name'].replace(' ', '_')}")
    for image in sorted((small_utkface / "images").iterdir()):
        lines.append(f"{image},")
    # The genuine side: a gallery person with three photos; the first is searched against the other two.
    blair = sorted((DATA / "lfw" / "images" / "Tony_Blair").glob("*.jpg"))[:3]
    lines += [f"{path},Tony_Blair" for path in blair]
    (gallery / "labels.csv").write_text("\n".join(lines) + "\n")
    overlap = tmp_path / "overlap.csv"
    overlap.write_text(f"bioguide,lfw_identity\n{picked[0]['bioguide']},{picked[0]['name'].replace(' ', '_')}\n")
    out = tmp_path / "out"
    report = run_aclu(
        CONGRESS / "images",
        members,
        [f"csv:{gallery / 'labels.csv'}"],
        out,
        tmp_path / "data",
        overlap=overlap,
        thresholds=(99.0, 80.0),
        workers=2,
    )
    assert report["probes"]["probed"] == 6
    assert report["gallery"]["excluded_overlap"]["images"] == 1
    strict = next(t for t in report["thresholds"] if t["threshold"] == 99.0)
    matched = {m["bioguide"]: m for m in strict["top_false_matches"]}
    assert picked[1]["bioguide"] in matched and matched[picked[1]["bioguide"]]["similarity"] > 99.9
    assert picked[1]["name"].replace(" ", "_") == matched[picked[1]["bioguide"]]["gallery"]
    assert all(m["gallery"] != picked[0]["name"].replace(" ", "_") for m in strict["top_false_matches"])
    assert strict["people_of_colour"]["among_members"] == {"count": 3, "of": 6, "share": 0.5}
    loose = next(t for t in report["thresholds"] if t["threshold"] == 80.0)
    assert loose["members_falsely_matched"]["count"] >= strict["members_falsely_matched"]["count"]
    assert "data:image/jpeg;base64," in (out / "report.html").read_text()
    assert "| 99 | 6 |" in (out / "summary.md").read_text()
    # The experiment ran as a governed operator: its gallery load and its searches are in the audit log.
    from facegate.audit import AuditLog

    log = AuditLog(tmp_path / "data")
    runs = [
        (r["operation"], r["decision"]) for r in log.entries(event="request") if r.get("actor") == "local-experiment"
    ]
    log.close()
    assert ("LoadFaces", "allow") in runs and ("CreateCollection", "allow") in runs
    # every member at each threshold, then every member and the one genuine probe for their nearest face
    assert runs.count(("SearchFacesByImage", "allow")) == 6 * 2 + 6 + 1
    assert report["gallery"]["genuine_probes_held_out"] == 1
    point = report["operating_points"][0]
    assert point["genuine_target"] == 0.95 and point["genuine_searches"] == 1 and point["genuine_found"] == 1.0
    assert point["threshold"] > 80  # Tony Blair's first photo finds one of his others first
    # The member whose own photo is in the gallery (not declared) is matched at any genuine threshold.
    assert point["members_falsely_matched"]["count"] >= 1 and point["members_falsely_matched"]["trials"] == 6
