"""Neighbourhood-density score normalisation on real faces: crowded groups stop being falsely matched more."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from facegate.engine.normalise import CohortModel, nearest_distances, pairwise_distances

from .conftest import DATA

UTKFACE = DATA / "utkface"
COHORT_PER_CELL = 12  # race × sex cell: 120 cohort faces in all
PROBES_PER_CELL = 10  # held-out White and Asian faces, never in the cohort
WHITE, ASIAN = "0", "2"


@pytest.fixture(scope="module")
def utkface(engine) -> dict[str, np.ndarray]:
    """Real UTKFace embeddings: a cohort over all races and sexes, and held-out White and Asian faces."""
    if not (UTKFACE / "labels.csv").exists():
        pytest.skip(f"UTKFace not found at {UTKFACE}: set FACEGATE_DATA to the shared data folder")
    with (UTKFACE / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    seen: dict[tuple[str, str], int] = {}
    cohort, white, asian = [], [], []
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
        elif row["race"] == WHITE:
            white.append(faces[0].embedding)
        elif row["race"] == ASIAN:
            asian.append(faces[0].embedding)
    return {"cohort": np.array(cohort), "white": np.array(white), "asian": np.array(asian)}


@pytest.fixture(scope="module")
def model(utkface) -> CohortModel:
    return CohortModel.fit(utkface["cohort"], k=5)


def _within_pairs(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    i, j = np.triu_indices(len(embeddings), k=1)
    return i, j, pairwise_distances(embeddings, embeddings)[i, j]


def test_crowded_faces_have_their_distances_raised(utkface, model):
    white, asian = model.face_statistic(utkface["white"]), model.face_statistic(utkface["asian"])
    assert asian.mean() < white.mean()  # dlib packs Asian faces closer together
    for group, stat in (("asian", asian), ("white", white)):
        i, j, d = _within_pairs(utkface[group])
        shift = model.normalised_distance(d, stat[i], stat[j]) - d
        assert (shift.mean() > 0) == (group == "asian")


def test_normalisation_narrows_the_false_match_gap(utkface, model):
    """At one threshold accepting the same share of all these impostor pairs, the Asian/White gap shrinks."""
    groups = {g: (utkface[g], model.face_statistic(utkface[g])) for g in ("white", "asian")}
    rates = {}
    for normalised in (False, True):
        scores = {}
        for g, (emb, stat) in groups.items():
            i, j, d = _within_pairs(emb)
            scores[g] = model.normalised_distance(d, stat[i], stat[j]) if normalised else d
        threshold = np.quantile(np.concatenate(list(scores.values())), 0.05)
        rates[normalised] = {g: ((s <= threshold).sum() + 0.5) / len(s) for g, s in scores.items()}
    raw_gap = rates[False]["asian"] / rates[False]["white"]
    fair_gap = rates[True]["asian"] / rates[True]["white"]
    assert raw_gap > 4
    assert fair_gap < raw_gap / 4


def test_the_same_person_is_still_the_nearest_face(engine, people, model):
    photos = [
        (name, engine.analyse(engine.decode(p.read_bytes())).faces) for name, paths in people.items() for p in paths
    ]
    names = np.array([name for name, faces in photos if faces])
    emb = np.array([faces[0].embedding for _, faces in photos if faces])
    stat = model.face_statistic(emb)
    d = model.normalised_distance(pairwise_distances(emb, emb), stat[:, None], stat[None, :])
    np.fill_diagonal(d, np.inf)
    assert (names[d.argmin(1)] == names).all()


def test_typical_faces_keep_their_raw_distance(utkface, model):
    d = pairwise_distances(utkface["white"][:3], utkface["asian"][:3]).ravel()
    typical = model.mean_statistic
    assert np.allclose(model.normalised_distance(d, typical, typical), d)
    unshifted = CohortModel(cohort=model.cohort, k=model.k, beta=0.0, mean_statistic=typical)
    stat = model.face_statistic(utkface["asian"][:3])
    assert np.allclose(unshifted.normalised_distance(d, np.repeat(stat, 3), np.tile(stat, 3)), d)


def test_parameters_round_trip_without_any_embedding(utkface, model):
    params = json.loads(json.dumps(model.to_json()))
    assert all(isinstance(v, int | float | str) for v in params.values())  # no vectors: the cohort is named only
    again = CohortModel.from_json(params, utkface["cohort"])
    probe = utkface["asian"]
    assert np.array_equal(again.face_statistic(probe), model.face_statistic(probe))
    with pytest.raises(ValueError, match="recalibrate"):
        CohortModel.from_json(params, utkface["cohort"][1:])


def test_a_cohort_face_does_not_count_itself(utkface, model):
    cohort = utkface["cohort"]
    own = nearest_distances(cohort, cohort, model.k).mean(1)  # includes its own distance, 0
    assert model.mean_statistic > own.mean()
    assert model.mean_statistic == pytest.approx(nearest_distances(cohort, cohort, model.k + 1)[:, 1:].mean(), rel=1e-5)


def test_fit_refuses_a_cohort_too_small_for_k(utkface):
    with pytest.raises(ValueError, match="k=10"):
        CohortModel.fit(utkface["cohort"][:8], k=10)
