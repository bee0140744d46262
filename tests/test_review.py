"""Human review as a policy obligation, through the governed operation: under two-person review a search's
matches are withheld until two reviewers of the organisation confirm the same candidate independently; a
rejection closes the case unreleased; a reviewer of another organisation cannot see the case."""

from __future__ import annotations

import pytest

from facegate.errors import (
    AccessDeniedException,
    ConflictException,
    InvalidParameterException,
    ResourceNotFoundException,
)
from facegate.governed import RequestContext
from facegate.keys import Principal


@pytest.fixture
def world(tmp_path, people):
    """A police department under the public-safety template with two-person review, a gallery of real faces,
    and reviewers of the department and of another organisation."""
    from facegate.compose import Settings, build

    facegate = build(Settings(tmp_path / "data"))
    governance, governed = facegate.governance, facegate.governed
    governance.create_organisation("metro-police", "law_enforcement", "US-WA")
    governance.create_organisation("acme", "commercial", "US-NY")
    police = Principal.operator("metro-police")
    governed.execute(police, "CreateCollection", {"CollectionId": "mugshots"})
    faces = {}
    for name, photos in people.items():
        indexed = governed.execute(
            police,
            "IndexFaces",
            {"CollectionId": "mugshots", "Image": {"Bytes": photos[0].read_bytes()}, "ExternalImageId": name},
        ).result
        faces[name] = indexed.records[0].face.face_id
    # At the template's default 99 most genuine pairs of different photos fall short (TMR 15%): 90 here.
    governance.activate("aws-public-safety", ["reviewers=2", "min_threshold=90"], "guidance, two examiners")
    accounts = facegate.console_accounts
    for username, orgs in (("ana", ("metro-police",)), ("ben", ("metro-police",)), ("eve", ("acme",))):
        accounts.create(username, "reviewer", orgs, password=f"{username}-correct-horse")
    users = {u.username: u for u in accounts.users()}
    yield {"facegate": facegate, "police": police, "faces": faces, "users": users, "people": people}
    facegate.close()


def _search(world, name: str = "Colin_Powell"):
    photo = world["people"][name][1].read_bytes()
    return world["facegate"].governed.execute(
        world["police"],
        "SearchFacesByImage",
        {"CollectionId": "mugshots", "Image": {"Bytes": photo}},
        RequestContext(case_reference="CASE-2026-0117"),
    )


def _release(world, case_id: str):
    """The client polling its case (an identification like the search: the case reference goes with it)."""
    context = RequestContext(case_reference="CASE-2026-0117")
    return world["facegate"].governed.execute(world["police"], "GetReviewCase", {"CaseId": case_id}, context).result


def test_two_reviewers_confirm_and_only_then_the_client_gets_the_match(world):
    searched = _search(world)
    case = searched.review_case
    assert case is not None and case.withheld and case.reviewers_required == 2
    assert searched.result.matches == ()  # nothing leaves before review
    assert [c["id"] for c in case.candidates] == [world["faces"]["Colin_Powell"]]
    assert case.probe_crop and case.probe_crop[:2] == b"\xff\xd8"  # a JPEG of the probe's face
    assert case.facts["case_reference"] == "CASE-2026-0117" and case.facts["threshold_applied"] == 90
    assert _release(world, case.case_id).face_matches == ()  # polled before review: still nothing

    desk, users = world["facegate"].governed.review, world["users"]
    after_one = desk.decide(users["ana"], case.case_id, "confirm", world["faces"]["Colin_Powell"])
    assert after_one.status == "open" and _release(world, case.case_id).face_matches == ()
    assert desk.decided_by(users["ben"], after_one) is None  # the second reviewer does not see the first's
    with pytest.raises(ConflictException, match="already decided"):
        desk.decide(users["ana"], case.case_id, "confirm", world["faces"]["Colin_Powell"])
    released = desk.decide(users["ben"], case.case_id, "confirm", world["faces"]["Colin_Powell"])
    assert released.status == "released" and released.probe_crop is None  # the probe crop goes with the case
    outcome = _release(world, case.case_id)
    assert [m.face.face_id for m in outcome.face_matches] == [world["faces"]["Colin_Powell"]]
    assert outcome.face_matches[0].similarity >= 90

    events = [e["event"] for e in world["facegate"].audit.entries() if str(e.get("case_id")) == case.case_id]
    assert events == ["review_opened", "review_decision", "review_decision", "review_closed"]


def test_one_rejection_and_the_client_never_gets_the_match(world):
    case = _search(world).review_case
    desk, users = world["facegate"].governed.review, world["users"]
    desk.decide(users["ana"], case.case_id, "confirm", world["faces"]["Colin_Powell"])
    rejected = desk.decide(users["ben"], case.case_id, "reject", None, "different ear, different nose")
    assert rejected.status == "rejected"
    assert _release(world, case.case_id).face_matches == ()
    with pytest.raises(ConflictException, match="rejected"):
        desk.decide(users["ana"], case.case_id, "confirm", world["faces"]["Colin_Powell"])


def test_reviewers_of_another_organisation_and_other_clients_cannot_see_the_case(world):
    case = _search(world).review_case
    desk, users = world["facegate"].governed.review, world["users"]
    with pytest.raises(ResourceNotFoundException):
        desk.case(users["eve"], case.case_id)
    with pytest.raises(ResourceNotFoundException):
        desk.decide(users["eve"], case.case_id, "confirm", world["faces"]["Colin_Powell"])
    assert [c.case_id for c in desk.cases(users["eve"])] == []
    assert [c.case_id for c in desk.cases(users["ana"])] == [case.case_id]
    with pytest.raises(ResourceNotFoundException):
        world["facegate"].governed.execute(
            Principal.operator("acme"), "GetReviewCase", {"CaseId": case.case_id}, RequestContext(case_reference="C-1")
        )
    with pytest.raises(InvalidParameterException, match="one of the case's candidates"):
        desk.decide(users["ana"], case.case_id, "confirm", "not-a-candidate")


def test_reviewers_confirming_different_candidates_escalate_the_case(world):
    from facegate.store import ReviewCase

    desk, users = world["facegate"].governed.review, world["users"]
    case = _search(world).review_case
    two = ReviewCase(**{**case.__dict__, "case_id": "c" * 32, "candidates": [*case.candidates, {"rank": 2, "id": "x"}]})
    world["facegate"].store.add_case(two)
    desk.decide(users["ana"], two.case_id, "confirm", case.candidates[0]["id"])
    escalated = desk.decide(users["ben"], two.case_id, "confirm", "x")
    assert escalated.status == "escalated" and _release(world, two.case_id).face_matches == ()


def test_sign_in_locks_out_after_repeated_failures_and_says_nothing_of_who_exists(world):
    accounts = world["facegate"].console_accounts
    assert accounts.sign_in("ana", "ana-correct-horse", "127.0.0.1").user.username == "ana"
    messages = set()
    for _ in range(5):
        with pytest.raises(AccessDeniedException) as wrong:
            accounts.sign_in("ana", "guess", "127.0.0.1")
        messages.add(str(wrong.value))
    with pytest.raises(AccessDeniedException) as locked:
        accounts.sign_in("ana", "ana-correct-horse", "127.0.0.1")  # the right password, but locked out
    with pytest.raises(AccessDeniedException) as nobody:
        accounts.sign_in("nobody", "whatever", "127.0.0.1")
    assert messages == {str(locked.value)} == {str(nobody.value)}
    failures = list(world["facegate"].audit.entries(event="console_sign_in_failed"))
    assert len(failures) == 6 and failures[4]["locked"] is True


def test_the_eu_ai_act_template_holds_a_user_search_for_two_reviewers(tmp_path, people):
    """Art. 14(5) under the EU AI Act template: a German police search for a serious-crime suspect, by user,
    released as UserMatches only after two confirmations."""
    from facegate.compose import Settings, build

    facegate = build(Settings(tmp_path / "data"))
    try:
        governance, governed = facegate.governance, facegate.governed
        governance.create_organisation("polizei-berlin", "law_enforcement", "EU-DE")
        use_case = governance.create_use_case(
            "polizei-berlin", "serious_crime_suspect", authorisation_reference="AG Tiergarten 2026/117"
        )
        key = governance.issue_key(use_case_id=use_case.use_case_id)
        officer = Principal(key.access_key_id, "polizei-berlin", "client", use_case.use_case_id)
        governed.execute(officer, "CreateCollection", {"CollectionId": "suspects"})
        indexed = governed.execute(
            officer,
            "IndexFaces",
            {"CollectionId": "suspects", "Image": {"Bytes": people["Serena_Williams"][0].read_bytes()}},
        ).result
        governed.execute(officer, "CreateUser", {"CollectionId": "suspects", "UserId": "suspect-7"})
        face = indexed.records[0].face.face_id
        governed.execute(
            officer, "AssociateFaces", {"CollectionId": "suspects", "UserId": "suspect-7", "FaceIds": [face]}
        )
        governance.activate("eu-ai-act-5-1-h", [], "EU AI Act in force")

        probe = {"CollectionId": "suspects", "Image": {"Bytes": people["Serena_Williams"][1].read_bytes()}}
        searched = governed.execute(officer, "SearchUsersByImage", probe)
        case = searched.review_case
        assert searched.result.matches == () and case.withheld and case.reviewers_required == 2
        assert case.facts["use_case"] == use_case.use_case_id and case.facts["purpose"] == "serious_crime_suspect"
        assert [c["id"] for c in case.candidates] == ["suspect-7"]

        accounts, desk = facegate.console_accounts, governed.review
        for name in ("anna", "bernd"):
            accounts.create(name, "reviewer", ("polizei-berlin",), password=f"{name}-correct-horse")
        users = {u.username: u for u in accounts.users()}
        desk.decide(users["anna"], case.case_id, "confirm", "suspect-7")
        assert governed.execute(officer, "GetReviewCase", {"CaseId": case.case_id}).result.user_matches == ()
        desk.decide(users["bernd"], case.case_id, "confirm", "suspect-7")
        released = governed.execute(officer, "GetReviewCase", {"CaseId": case.case_id}).result
        assert [m.user_id for m in released.user_matches] == ["suspect-7"]
    finally:
        facegate.close()


def test_a_video_face_search_under_two_person_review_reports_no_match_before_release(world, tmp_path):
    from .clips import Appearance, make_clip

    people = world["people"]
    clip = make_clip(tmp_path / "cctv.mp4", [Appearance(people["Colin_Powell"][1], 0.5, 3.0)], 4)
    governed, jobs = world["facegate"].governed, world["facegate"].jobs
    context = RequestContext(case_reference="CASE-2026-0117")
    started = governed.execute(
        world["police"], "StartFaceSearch", {"Video": {"File": str(clip)}, "CollectionId": "mugshots"}, context
    ).result
    job = jobs.run(started.job_id, "metro-police")
    assert job.status == "SUCCEEDED", job.status_message
    job = world["facegate"].store.get_job("metro-police", started.job_id)
    assert list(job.review_cases) == ["0"]  # one person, one case

    def get():
        return governed.execute(world["police"], "GetFaceSearch", {"JobId": started.job_id}, context).result

    assert get().persons == ()  # withheld until two reviewers confirm
    case = world["facegate"].store.get_case(job.review_cases["0"])
    assert case.withheld and case.probe_crop[:2] == b"\xff\xd8"  # the person's face, cut from the video
    assert [c["id"] for c in case.candidates] == [world["faces"]["Colin_Powell"]]
    desk, users = governed.review, world["users"]
    desk.decide(users["ana"], case.case_id, "confirm", world["faces"]["Colin_Powell"])
    assert get().persons == ()
    desk.decide(users["ben"], case.case_id, "confirm", world["faces"]["Colin_Powell"])
    released = get().persons
    assert [p.timestamp_ms for p in released] == [500, 1000, 1500, 2000, 2500]
    assert all(m.face.face_id == world["faces"]["Colin_Powell"] for p in released for m in p.matches)
