"""Retention: expired faces are deleted for real — gone from the store and from search — and each deletion
is audited."""

from __future__ import annotations

import time

import pytest

from facegate.audit import AuditLog
from facegate.governance import Clock, Governance
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


def later(governance, days: float) -> None:
    governance.clock_file.write_text(str(time.time() + days * 86400))


def indexed(service, people, collection: str, tags: dict | None = None) -> list[str]:
    service.call(OWNER, "CreateCollection", {"CollectionId": collection, **({"Tags": tags} if tags else {})})
    ids = []
    for path in people["Tony_Blair"][:3]:
        response = service.call(OWNER, "IndexFaces", {"CollectionId": collection, "Image": image_of(path)})
        ids += [r["Face"]["FaceId"] for r in response["FaceRecords"]]
    return ids


def test_faces_past_max_days_are_purged_and_audited(service, governance, people):
    ids = indexed(service, people, "kept-30-days")
    service.call(OWNER, "CreateUser", {"CollectionId": "kept-30-days", "UserId": "tony"})
    service.call(OWNER, "AssociateFaces", {"CollectionId": "kept-30-days", "UserId": "tony", "FaceIds": ids[:1]})
    governance.set_retention(OWNER, "kept-30-days", max_days=30, until=None, reason="policy: 30 days")

    later(governance, 29)
    assert governance.purge()[0]["deleted"] == []
    later(governance, 31)
    dry = governance.purge(dry_run=True)
    assert sorted(dry[0]["deleted"]) == sorted(ids)
    assert service.call(OWNER, "DescribeCollection", {"CollectionId": "kept-30-days"})["FaceCount"] == 3
    purged = governance.purge()
    assert sorted(purged[0]["deleted"]) == sorted(ids)  # the user's face too: retention overrides association
    assert service.call(OWNER, "DescribeCollection", {"CollectionId": "kept-30-days"})["FaceCount"] == 0
    probe = image_of(people["Tony_Blair"][3])
    search = service.call(
        OWNER, "SearchFacesByImage", {"CollectionId": "kept-30-days", "Image": probe, "FaceMatchThreshold": 0}
    )
    assert search["FaceMatches"] == []
    deletions = list(governance.audit.entries(event="deletion"))
    assert sorted(d["face_id"] for d in deletions) == sorted(ids)
    assert all("retention" in d["reason"] for d in deletions)


def test_purpose_end_deletes_everything(service, governance, people):
    ids = indexed(service, people, "campaign")
    governance.set_retention(OWNER, "campaign", max_days=None, until=time.time() + 10 * 86400, reason="campaign ends")
    later(governance, 5)
    assert governance.purge()[0]["deleted"] == []
    later(governance, 11)
    assert sorted(governance.purge()[0]["deleted"]) == sorted(ids)


def test_bipa_limits_illinois_collections_to_three_years(service, governance, people):
    ids = indexed(service, people, "chicago", tags={"jurisdiction": "US-IL"})
    indexed(service, people, "new-york", tags={"jurisdiction": "US-NY"})
    governance.activate("illinois-bipa", [], reason="we serve Illinois residents")
    later(governance, 3 * 365 - 1)
    assert all(item["deleted"] == [] for item in governance.purge())
    later(governance, 3 * 365 + 1)
    report = {item["collection"]: item for item in governance.purge()}
    assert sorted(report["chicago"]["deleted"]) == sorted(ids) and "new-york" not in report
    assert service.call(OWNER, "DescribeCollection", {"CollectionId": "new-york"})["FaceCount"] == 3
