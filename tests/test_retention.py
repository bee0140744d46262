"""Retention: expired faces are deleted for real — gone from the store and from search — and each deletion
is audited."""

from __future__ import annotations

import time

import pytest

from facegate.audit import AuditLog
from facegate.governance import Clock, Governance
from facegate.governed import GovernedService
from facegate.keys import KeyRing

from .conftest import OWNER, image_of


@pytest.fixture
def governance(store, tmp_path):
    clock_file = tmp_path / "clock"
    clock_file.write_text(str(time.time()))
    governance = Governance(
        store, KeyRing(store, tmp_path / "data"), AuditLog(tmp_path / "data"), Clock(str(clock_file))
    )
    governance.clock_file = clock_file
    return governance


@pytest.fixture
def retention(governance, service) -> GovernedService:
    """Retention purges through the governed operation, as `facegate retention purge` does."""
    return GovernedService(governance, service)


def later(governance, days: float) -> None:
    governance.clock_file.write_text(str(time.time() + days * 86400))


def indexed(service, people, collection: str, tags: dict | None = None) -> list[str]:
    service.call(OWNER, "CreateCollection", {"CollectionId": collection, **({"Tags": tags} if tags else {})})
    ids = []
    for path in people["Tony_Blair"][:3]:
        response = service.call(OWNER, "IndexFaces", {"CollectionId": collection, "Image": image_of(path)})
        ids += [r.face.face_id for r in response.records]
    return ids


def test_faces_past_max_days_are_purged_and_audited(service, governance, retention, people):
    ids = indexed(service, people, "kept-30-days")
    service.call(OWNER, "CreateUser", {"CollectionId": "kept-30-days", "UserId": "tony"})
    service.call(OWNER, "AssociateFaces", {"CollectionId": "kept-30-days", "UserId": "tony", "FaceIds": ids[:1]})
    governance.set_retention(OWNER, "kept-30-days", max_days=30, until=None, reason="policy: 30 days")

    later(governance, 29)
    assert retention.purge_expired()[0]["deleted"] == []
    later(governance, 31)
    dry = retention.purge_expired(dry_run=True)
    assert sorted(dry[0]["deleted"]) == sorted(ids)
    assert service.call(OWNER, "DescribeCollection", {"CollectionId": "kept-30-days"}).face_count == 3
    purged = retention.purge_expired()
    assert sorted(purged[0]["deleted"]) == sorted(ids)  # the user's face too: retention overrides association
    assert service.call(OWNER, "DescribeCollection", {"CollectionId": "kept-30-days"}).face_count == 0
    probe = image_of(people["Tony_Blair"][3])
    search = service.call(
        OWNER, "SearchFacesByImage", {"CollectionId": "kept-30-days", "Image": probe, "FaceMatchThreshold": 0}
    )
    assert search.matches == ()
    deletions = list(governance.audit.entries(event="deletion"))
    assert sorted(d["face_id"] for d in deletions) == sorted(ids)
    assert all("retention" in d["reason"] for d in deletions)
    # The purge itself was a governed request, announced before the change and closed after it.
    (intent,) = governance.audit.entries(event="intent")
    (purge,) = [r for r in governance.audit.entries(event="request") if r["operation"] == "PurgeFaces"]
    assert purge["actor"] == "retention" and purge["decision"] == "allow" and purge["intent_seq"] == intent["seq"]
    assert sorted(purge["deleted_face_ids"]) == sorted(ids)
    user = service.call(OWNER, "ListUsers", {"CollectionId": "kept-30-days"}).users
    assert [u.user_id for u in user] == ["tony"]  # the user stays, with no faces left
    faces = service.call(OWNER, "ListFaces", {"CollectionId": "kept-30-days", "UserId": "tony"}).faces
    assert faces == ()


def test_purpose_end_deletes_everything(service, governance, retention, people):
    ids = indexed(service, people, "campaign")
    governance.set_retention(OWNER, "campaign", max_days=None, until=time.time() + 10 * 86400, reason="campaign ends")
    later(governance, 5)
    assert retention.purge_expired()[0]["deleted"] == []
    later(governance, 11)
    assert sorted(retention.purge_expired()[0]["deleted"]) == sorted(ids)


def test_bipa_limits_illinois_collections_to_three_years(service, governance, retention, people):
    ids = indexed(service, people, "chicago", tags={"jurisdiction": "US-IL"})
    indexed(service, people, "new-york", tags={"jurisdiction": "US-NY"})
    governance.activate("illinois-bipa", [], reason="we serve Illinois residents")
    later(governance, 3 * 365 - 1)
    assert all(item["deleted"] == [] for item in retention.purge_expired())
    later(governance, 3 * 365 + 1)
    report = {item["collection"]: item for item in retention.purge_expired()}
    assert sorted(report["chicago"]["deleted"]) == sorted(ids) and "new-york" not in report
    assert service.call(OWNER, "DescribeCollection", {"CollectionId": "new-york"}).face_count == 3
