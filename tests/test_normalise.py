"""Rank-profile score normalisation on real faces (issue 19): crowded groups stop being falsely matched more,
the served scores keep a threshold's meaning, and every comparison and search says which scores it served."""

from __future__ import annotations

import csv
import json
import sqlite3

import numpy as np
import pytest
from typer.testing import CliRunner

import facegate
from facegate.engine.normalise import RankProfileModel, pairwise_distances
from facegate.engine.scores import (
    RAW,
    NormalisedScoring,
    ScoreCalibration,
    Scoring,
    activate_scores,
    active_scores,
    calibrate,
    scoring_for,
)
from facegate.fairness.commands import fairness_app
from facegate.service import FaceService

from .conftest import DATA, OWNER, image_of

UTKFACE = DATA / "utkface"
COHORT_PER_CELL = 100  # race × sex cell: 1,000 cohort faces, half of them to measure FMR 1e-5 with
PROBES_PER_CELL = 10  # held-out White and Asian faces, never in the cohort
WHITE, ASIAN = "0", "2"


@pytest.fixture(scope="module")
def utkface(engine) -> dict:
    """Real UTKFace embeddings: a cohort over all races and sexes, and held-out White and Asian faces."""
    if not (UTKFACE / "labels.csv").exists():
        pytest.skip(f"UTKFace not found at {UTKFACE}: set FACEGATE_DATA to the shared data folder")
    with (UTKFACE / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    seen: dict[tuple[str, str], int] = {}
    cohort, white, asian, files, held_out = [], [], [], [], []
    for row in rows:
        cell = (row["race"], row["gender"])
        n = seen.get(cell, 0)
        if n >= COHORT_PER_CELL + PROBES_PER_CELL:
            continue
        faces = engine.analyse(engine.decode((UTKFACE / row["path"]).read_bytes())).faces
        if not faces:
            continue
        seen[cell] = n + 1
        if n < COHORT_PER_CELL:
            cohort.append(faces[0].embedding)
            files.append(row["path"])
        elif row["race"] in (WHITE, ASIAN):
            (white if row["race"] == WHITE else asian).append(faces[0].embedding)
            held_out.append((row["path"], "White" if row["race"] == WHITE else "Asian"))
    return {
        "cohort": np.array(cohort),
        "white": np.array(white),
        "asian": np.array(asian),
        "files": files,
        "held_out": held_out,
    }


@pytest.fixture(scope="module")
def model(utkface) -> RankProfileModel:
    return RankProfileModel.fit(utkface["cohort"])


@pytest.fixture(scope="module")
def calibration(utkface, engine) -> ScoreCalibration:
    ids = np.arange(len(utkface["cohort"]))  # UTKFace has no identities: every image is its own
    return calibrate(utkface["cohort"], ids, model_version=engine.model_version, cohorts=[{"spec": "test"}])


def _within_pairs(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    i, j = np.triu_indices(len(embeddings), k=1)
    return i, j, pairwise_distances(embeddings, embeddings)[i, j]


def test_crowded_faces_reach_a_rank_at_a_smaller_distance(utkface, model):
    white, asian = model.profiles(utkface["white"]), model.profiles(utkface["asian"])
    assert (np.diff(white, axis=1) >= 0).all()  # a profile is each face's distances at increasing ranks
    assert np.median(asian, axis=0)[len(model.ranks) // 2] < np.median(white, axis=0)[len(model.ranks) // 2]


def test_normalisation_narrows_the_false_match_gap(utkface, model):
    """At one threshold accepting the same share of all these impostor pairs, the Asian/White gap shrinks."""
    rates = {}
    for normalised in (False, True):
        scores = {}
        for g in ("white", "asian"):
            emb = utkface[g]
            i, j, d = _within_pairs(emb)
            profiles = model.profiles(emb)
            scores[g] = model.scores(d, profiles[i], profiles[j]) if normalised else d
        threshold = np.quantile(np.concatenate(list(scores.values())), 0.05)
        rates[normalised] = {g: ((s <= threshold).sum() + 0.5) / len(s) for g, s in scores.items()}
    raw_gap = rates[False]["asian"] / rates[False]["white"]
    fair_gap = rates[True]["asian"] / rates[True]["white"]
    assert raw_gap > 4
    assert fair_gap < raw_gap / 4


def test_the_same_person_is_still_the_most_similar_face(engine, people, model):
    photos = [
        (name, engine.analyse(engine.decode(p.read_bytes())).faces) for name, paths in people.items() for p in paths
    ]
    names = np.array([name for name, faces in photos if faces])
    emb = np.array([faces[0].embedding for _, faces in photos if faces])
    profiles = model.profiles(emb)
    n = len(emb)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    d = pairwise_distances(emb, emb)
    scores = model.scores(d.ravel(), profiles[i.ravel()], profiles[j.ravel()]).reshape(n, n)
    np.fill_diagonal(scores, np.inf)
    assert (names[scores.argmin(1)] == names).all()


def test_a_cohort_face_does_not_count_its_own_identity(utkface, model):
    cohort = utkface["cohort"]
    own = model.profiles(cohort)
    assert np.allclose(own[:, 0], 0.0, atol=3e-3)  # its nearest cohort face is itself (float32 rounding)
    ids = np.arange(len(cohort))
    without = model.profiles(cohort, identities=ids, cohort_ids=ids)
    assert (without[:, 0] >= own[:, 0]).all() and np.median(without[:, 0]) > 0.3  # UTKFace has a few near-duplicates


def test_parameters_round_trip_without_any_embedding(utkface, model):
    params = json.loads(json.dumps(model.to_json()))
    assert all(
        isinstance(v, int | str) or (isinstance(v, list) and all(isinstance(r, int) for r in v))
        for v in params.values()
    )
    again = RankProfileModel.from_json(params, utkface["cohort"])
    assert np.array_equal(again.profiles(utkface["asian"]), model.profiles(utkface["asian"]))
    with pytest.raises(ValueError, match="recalibrate"):
        RankProfileModel.from_json(params, utkface["cohort"][1:])


def test_a_cohort_too_small_is_refused(utkface, engine):
    with pytest.raises(ValueError, match="at least 100"):
        RankProfileModel.fit(utkface["cohort"][:50])
    with pytest.raises(ValueError, match="impostor pairs"):
        calibrate(utkface["cohort"][:300], np.arange(300), model_version=engine.model_version, cohorts=[])


def test_the_similarity_table_is_measured_on_the_scores(calibration):
    anchors = {a["similarity"]: a["score"] for a in calibration.table["anchors"]}
    assert list(anchors) == [100.0, 99.0, 95.0, 90.0, 80.0, 50.0, 0.0]
    assert all(b > a for a, b in zip(list(anchors.values()), list(anchors.values())[1:], strict=False))
    for point in calibration.table["operating_points"]:  # each threshold's measured cohort FMR is its anchor's
        target = {99.0: 1e-5, 95.0: 1e-4, 90.0: 1e-3, 80.0: 1e-2, 50.0: 1e-1}[point["threshold"]]
        # ≈ its target; at the strictest, a few near-duplicate UTKFace photos tie at the lowest score
        assert (
            point["fmr"] == pytest.approx(target, rel=0.05) or point["fmr"] * calibration.table["impostor_pairs"] <= 10
        )
    assert calibration.scale.similarity(anchors[90.0]) == pytest.approx(90.0)


def test_a_calibration_is_stored_named_and_refused_when_altered(tmp_path, calibration, engine):
    assert active_scores(tmp_path) == RAW and type(scoring_for(tmp_path, engine.similarity)) is Scoring
    folder = calibration.save(tmp_path, activate=True)
    assert active_scores(tmp_path) == calibration.calibration_id
    served = scoring_for(tmp_path, engine.similarity)
    assert isinstance(served, NormalisedScoring) and served.name == calibration.calibration_id
    table = json.loads((folder / "calibration.json").read_text())
    table["anchors"][3]["score"] += 0.5
    (folder / "calibration.json").write_text(json.dumps(table))
    with pytest.raises(ValueError, match="changed"):
        scoring_for(tmp_path, engine.similarity)
    with pytest.raises(ValueError, match="missing"):
        activate_scores(tmp_path, "cal-0000000000000000")


def test_search_and_compare_serve_the_normalised_scores(store, engine, people, calibration):
    scores = NormalisedScoring(calibration, engine.similarity)
    service = FaceService(store, engine, scores=scores)
    service.call(OWNER, "CreateCollection", {"CollectionId": "c"})
    for name, paths in people.items():
        for path in paths[:2]:
            service.call(OWNER, "IndexFaces", {"CollectionId": "c", "Image": image_of(path), "ExternalImageId": name})
    probe = people["Tony_Blair"][2]
    found = service.call(OWNER, "SearchFacesByImage", {"CollectionId": "c", "Image": image_of(probe), "MaxFaces": 8})
    assert found.scores == calibration.calibration_id
    assert found.matches[0].face.external_image_id == "Tony_Blair"
    similarities = [m.similarity for m in found.matches]
    assert similarities == sorted(similarities, reverse=True)
    compared = service.call(
        OWNER, "CompareFaces", {"SourceImage": image_of(probe), "TargetImage": image_of(people["Tony_Blair"][0])}
    )
    assert compared.scores == calibration.calibration_id
    raw = FaceService(store, engine).call(
        OWNER, "CompareFaces", {"SourceImage": image_of(probe), "TargetImage": image_of(people["Tony_Blair"][0])}
    )
    assert raw.scores == RAW and raw.matches[0].similarity != compared.matches[0].similarity
    # One scoring whoever asks: the search's similarity for a face is CompareFaces' for the same pair of photos.
    # A threshold's distance bound (from the probe's own profile) drops no face the threshold accepts.
    for threshold in (80.0, 90.0, 95.0):
        strict = service.call(
            OWNER,
            "SearchFacesByImage",
            {"CollectionId": "c", "Image": image_of(probe), "MaxFaces": 8, "FaceMatchThreshold": threshold},
        )
        everything = service.call(
            OWNER,
            "SearchFacesByImage",
            {"CollectionId": "c", "Image": image_of(probe), "MaxFaces": 8, "FaceMatchThreshold": 0.0},
        )
        assert [m.face.face_id for m in strict.matches] == [
            m.face.face_id for m in everything.matches if m.similarity >= threshold
        ]
    assert np.isfinite(scores.prefilter(95.0, found.searched_face.face.embedding))
    tony = [m.similarity for m in found.matches if m.face.external_image_id == "Tony_Blair"]
    assert any(abs(similarity - compared.matches[0].similarity) < 1e-4 for similarity in tony)  # to float32 rounding


def test_calibrate_from_the_command_line_serves_and_audits(tmp_path, utkface, people):
    listing = tmp_path / "cohort.csv"
    with listing.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path"])
        writer.writerows([[str(UTKFACE / f)] for f in utkface["files"]])
    home = tmp_path / "data"
    runner = CliRunner()
    made = runner.invoke(
        fairness_app, ["calibrate", "--cohort", f"csv:{listing}", "--no-activate", "--data", str(home)]
    )
    assert made.exit_code == 0, made.output
    assert active_scores(home) == RAW and "stored, not served" in made.output  # only measured
    served = made.output.split("score calibration ")[1].split(":")[0]
    assert served.startswith("cal-") and (home / "scores" / served / "calibration.json").exists()
    again = runner.invoke(fairness_app, ["calibrate", "--cohort", f"csv:{listing}", "--data", str(home)])
    assert again.exit_code == 0 and active_scores(home) == served  # the same cohort and seed: the same calibration
    assert "FMR" in again.output and "no longer gates" in again.output
    shown = runner.invoke(fairness_app, ["scores", "--data", str(home)])
    assert shown.exit_code == 0 and f"serving: {served}" in shown.output
    with facegate.open(home) as fg:
        fg.create_collection("family")
        fg.index(people["Tony_Blair"][0], "family", external_image_id="tony")
        assert fg.search(people["Tony_Blair"][1], "family")[0].face.external_image_id == "tony"
    with sqlite3.connect(home / "audit.sqlite3") as db:
        records = [json.loads(r[0]) for r in db.execute("SELECT record FROM entries ORDER BY seq")]
    assert any(r.get("event") == "scores_activated" and r.get("scores") == served for r in records)
    searches = [r for r in records if r.get("operation") == "SearchFacesByImage"]
    assert searches and all(r["scores"] == served for r in searches)
    refused = runner.invoke(fairness_app, ["scores", "raw", "--data", str(home)])
    assert refused.exit_code == 1 and "--reason" in refused.output
    back = runner.invoke(fairness_app, ["scores", "raw", "--reason", "drill", "--data", str(home)])
    assert back.exit_code == 0 and active_scores(home) == RAW
    bad = runner.invoke(fairness_app, ["calibrate", "--cohort", "csv:/nowhere.csv", "--data", str(home)])
    assert bad.exit_code == 1


def test_the_fairness_audit_measures_the_served_scores_beside_raw(tmp_path, utkface, calibration):
    home = tmp_path / "data"
    calibration.save(home, activate=True)
    listing = tmp_path / "held_out.csv"
    with listing.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "race"])
        writer.writerows([[str(UTKFACE / path), race] for path, race in utkface["held_out"]])
    out = tmp_path / "audit"
    runner = CliRunner()
    audited = runner.invoke(
        fairness_app, ["audit", "--dataset", f"csv:{listing}", "--out", str(out), "--data", str(home)]
    )
    assert audited.exit_code == 0, audited.output
    assert f"raw → {calibration.calibration_id}" in audited.output and "worst/best" in audited.output
    served = json.loads((out / "report.json").read_text())
    raw = json.loads((out / "raw" / "report.json").read_text())
    assert served["scores"]["served"] == calibration.calibration_id and served["scores"]["cohort_overlap_faces"] == 0
    assert raw["scores"]["served"] == RAW

    # Same pairs, other scores: the similarity-80 rates differ, and Asian faces' raw excess shrinks.
    def rates(report: dict) -> dict[str, float]:
        race = next(d for d in report["dimensions"] if d["name"] == "race")
        k = next(i for i, p in enumerate(report["operating_points"]) if p["name"] == "similarity 80")
        return {g: race["operating_points"][k]["groups"][g]["fmr"]["rate"] for g in race["groups"]}

    before, after = rates(raw), rates(served)
    assert before["Asian"] > before["White"]
    assert after["Asian"] / max(after["White"], 1e-9) < before["Asian"] / max(before["White"], 1e-9)
    refused = runner.invoke(
        fairness_app, ["activate", str(out / "raw" / "report.json"), "--reason", "x", "--data", str(home)]
    )
    assert refused.exit_code == 1 and "serves" in refused.output


def test_one_to_many_is_measured_with_mateless_searches(utkface, engine):
    """metrics.identification against a brute-force count: random galleries, every other face a probe."""
    from facegate.engine.similarity import similarity_scale
    from facegate.fairness import metrics

    emb = np.vstack([utkface["white"], utkface["asian"]])
    codes = np.array([0] * len(utkface["white"]) + [1] * len(utkface["asian"]))
    ids = np.arange(len(emb))
    limit = similarity_scale(engine.model_version).max_distance(80.0)
    close = metrics.close_impostor_pairs(emb, ids, limit)
    measured = metrics.identification(codes, ids, close, [limit], (15,), seed=3)[15][0]
    in_gallery = np.zeros(len(emb), dtype=bool)
    in_gallery[np.random.default_rng(3).choice(len(emb), 15, replace=False)] = True
    d = pairwise_distances(emb, emb)
    for group in (0, 1):
        probes = np.nonzero(~in_gallery & (codes == group))[0]
        hits = (d[np.ix_(probes, np.nonzero(in_gallery)[0])] <= limit).sum(1)
        assert measured[group]["probes"] == len(probes)
        assert measured[group]["false_candidates_per_search"] == pytest.approx(hits.mean())
        assert measured[group]["fpir"]["count"] == int((hits > 0).sum())
    assert measured[1]["false_candidates_per_search"] > measured[0]["false_candidates_per_search"]  # raw scores
