"""Human review of identifications, as a policy obligation: a search whose use case obliges review opens a case;
under two-person review (EU AI Act Art. 14(5)) the client gets no match until two different reviewers, each
authorised for the organisation, have each confirmed the same candidate without seeing the other's decision.

A "not this person" (reject) closes the case unreleased; two confirmations of different candidates escalate it
(it is never released). Every opened case, decision and closing is an audit event; the probe crop is kept only
while the case is open.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from facegate.crops import face_crop
from facegate.errors import ConflictException, InvalidParameterException, ResourceNotFoundException
from facegate.results import FaceMatch, FaceMatches, FoundFace, Result, UserMatches
from facegate.snapshots import stored_face_json
from facegate.store import ConsoleUser, ReviewCase, ReviewDecision, Store, VideoJob

if TYPE_CHECKING:
    from facegate.governance import GateOutcome, Governance
    from facegate.keys import Principal
    from facegate.video import PersonForReview

CASE_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex: anything else is no case (and never reaches SQL)
REVIEWED = frozenset({"SearchFaces", "SearchFacesByImage", "SearchUsers", "SearchUsersByImage"})
OPEN, RELEASED, REJECTED, ESCALATED = "open", "released", "rejected", "escalated"
CONFIRM, REJECT = "confirm", "reject"
REVIEWER = "reviewer"


class ReviewDesk:
    """Opens cases for the governed operation; takes reviewers' decisions; answers what a case released."""

    def __init__(self, store: Store, governance: Governance) -> None:
        self.store = store
        self.governance = governance

    # For the governed operation

    def applies(self, outcome: GateOutcome, operation: str, result: Result) -> bool:
        obligations = outcome.decision.obligations
        if not obligations.human_review or operation not in REVIEWED:
            return False
        # Under two-person review every search gets a case, matches or none: the answer never tells them apart.
        return obligations.reviewers >= 2 or bool(getattr(result, "matches", ()))

    def open_case(
        self,
        outcome: GateOutcome,
        principal: Principal,
        operation: str,
        result: FaceMatches | UserMatches,
        request_id: str,
        probe_image: bytes | None,
    ) -> ReviewCase:
        """A case for ``result``'s matches; withheld from the client when two or more reviewers are required."""
        searched = result.searched_face
        crop = face_crop(probe_image, searched) if probe_image is not None and searched is not None else None
        return self._open(
            principal,
            operation,
            outcome.decision.obligations.reviewers,
            _facts(outcome, result, searched),
            _candidates(result),
            request_id,
            crop,
        )

    def open_video_cases(
        self,
        job: VideoJob,
        principal: Principal,
        reviewers: int,
        persons: list[PersonForReview],
        crops: dict[int, bytes],
    ) -> dict[str, str]:
        """A case per person of a face-search job, recorded on the job (GetFaceSearch answers by them); person
        index → case id."""
        cases = {
            str(p.index): self.open_video_case(
                job, principal, reviewers, p.index, p.matches, (p.first_ms, p.last_ms), crops.get(p.index)
            ).case_id
            for p in persons
        }
        if cases:
            self.store.set_job_review_cases(job.job_id, cases)
        return cases

    def open_video_case(
        self,
        job: VideoJob,
        principal: Principal,
        reviewers: int,
        person: int,
        matches: list[FaceMatch],
        seen: tuple[int, int],
        probe_crop: bytes | None,
    ) -> ReviewCase:
        """A case for one person of a face-search job: the collection's faces their face matched (best similarity
        over the video), withheld from GetFaceSearch until released when two or more reviewers are required."""
        facts = {
            "use_case": principal.use_case_id,
            "case_reference": job.requester.get("case_reference"),
            "collection": job.request.get("CollectionId"),
            "threshold_applied": job.request.get("FaceMatchThreshold"),
            "job_id": job.job_id,
            "video": job.request.get("Video"),
            "person": person,
            "seen_ms": list(seen),
            "policies": [],
            "model_version": matches[0].face.model_version if matches else None,
        }
        candidates = _candidates(FaceMatches(tuple(matches), ""))
        return self._open(
            principal,
            "StartFaceSearch",
            reviewers,
            facts,
            candidates,
            job.job_id,
            probe_crop,
            job_id=job.job_id,
            person=person,
        )

    def _open(
        self,
        principal: Principal,
        operation: str,
        reviewers: int,
        facts: dict,
        candidates: list,
        request_id: str,
        probe_crop: bytes | None,
        **audited: Any,
    ) -> ReviewCase:
        """Store a new case and audit its opening; ``audited`` adds facts to the audit record."""
        now = time.time()
        required = max(1, reviewers)
        case = ReviewCase(
            case_id=uuid.uuid4().hex,
            owner=principal.owner,
            operation=operation,
            status=OPEN,
            reviewers_required=required,
            withheld=required >= 2,
            facts=facts,
            candidates=candidates,
            requester=principal.access_key_id,
            request_id=request_id,
            created_at=now,
            updated_at=now,
            probe_crop=probe_crop,
        )
        self.store.add_case(case)
        self.governance.record_event(
            "review_opened",
            principal.actor,
            organisation=case.owner,
            case_id=case.case_id,
            operation=operation,
            **audited,
            reviewers_required=required,
            withheld=case.withheld,
            candidates=[c["id"] for c in candidates],
            probe_crop_kept=probe_crop is not None,
        )
        return case

    @staticmethod
    def withhold(result: FaceMatches | UserMatches) -> Result:
        return replace(result, matches=())

    # For reviewers (the console)

    def cases(self, user: ConsoleUser, status: str | None = None) -> list[ReviewCase]:
        owners = None if "*" in user.organisations else list(user.organisations)
        return self.store.list_cases(owners, status)

    def case(self, user: ConsoleUser, case_id: str) -> ReviewCase:
        """The case, if ``user`` may see it; otherwise as if it did not exist."""
        case = self.store.get_case(case_id) if CASE_ID.fullmatch(case_id or "") else None
        if case is None or not _authorised(user, case.owner):
            raise ResourceNotFoundException(f"There is no review case {case_id[:64]}.")
        return case

    def decided_by(self, user: ConsoleUser, case: ReviewCase) -> ReviewDecision | None:
        """This reviewer's own decision (never another's: reviews are independent)."""
        return next((d for d in self.store.decisions(case.case_id) if d.reviewer == user.username), None)

    def thumbnails(self, user: ConsoleUser, case_id: str) -> dict[str, bytes]:
        """The candidates' stored face crops (where the collection keeps them), for a user who may see the case."""
        case = self.case(user, case_id)
        collection = self.store.get_collection(case.owner, case.facts.get("collection") or "")
        faces = [c["id"] for c in case.candidates if "face" in c]
        return self.store.thumbnails(collection, faces) if collection is not None and faces else {}

    def decisions_recorded(self, case: ReviewCase) -> int:
        return len(self.store.decisions(case.case_id))

    def decide(
        self, user: ConsoleUser, case_id: str, verdict: str, candidate: str | None, note: str = ""
    ) -> ReviewCase:
        """Record ``user``'s verdict; close the case when it is settled. Returns the case as it now stands."""
        case = self.case(user, case_id)
        if user.role != REVIEWER:
            raise InvalidParameterException(f"Only reviewers decide cases; {user.username} is {user.role}.")
        if verdict not in (CONFIRM, REJECT):
            raise InvalidParameterException(f"Verdict {verdict!r} is neither {CONFIRM} nor {REJECT}.")
        if verdict == CONFIRM and candidate not in {c["id"] for c in case.candidates}:
            raise InvalidParameterException("Confirm one of the case's candidates.")
        decision = ReviewDecision(
            case_id, user.username, verdict, candidate if verdict == CONFIRM else None, time.time(), note[:500]
        )
        result, settled = self.store.decide_case(decision, settle)
        if result == "not-open":
            raise ConflictException(f"Review case {case_id} is {settled.status}: it takes no more decisions.")
        if result == "duplicate":
            raise ConflictException(f"{user.username} has already decided review case {case_id}.")
        self.governance.record_event(
            "review_decision",
            f"console:{user.username}",
            organisation=case.owner,
            case_id=case_id,
            verdict=verdict,
            candidate=decision.face_id,
        )
        if settled.status != OPEN:
            self.governance.record_event(
                "review_closed",
                "review",
                organisation=case.owner,
                case_id=case_id,
                status=settled.status,
                released=settled.released,
                reviewers=[d.reviewer for d in self.store.decisions(case_id)],
                probe_crop_deleted=case.probe_crop is not None,
            )
        return settled


def settle(case: ReviewCase, decisions: list[ReviewDecision]) -> tuple[str, list[str] | None] | None:
    """How the decisions so far settle a case: any rejection closes it unreleased; once enough reviewers have
    decided, one candidate confirmed by all is released and different candidates escalate it; else still open."""
    if any(d.verdict == REJECT for d in decisions):
        return REJECTED, None
    if len(decisions) >= case.reviewers_required:
        confirmed = {d.face_id for d in decisions}
        return (RELEASED, sorted(confirmed)) if len(confirmed) == 1 else (ESCALATED, None)
    return None


def released_ids(case: ReviewCase) -> set[str] | None:
    """The candidate ids the client may see: all when the case does not withhold, else only those released."""
    if not case.withheld:
        return None
    return set(case.released or []) if case.status == RELEASED else set()


def released_candidates(case: ReviewCase) -> list[dict]:
    """The candidates a closed case released to the client (none unless both reviewers confirmed one)."""
    if case.status != RELEASED or not case.released:
        return []
    return [c for c in case.candidates if c["id"] in case.released]


def _authorised(user: ConsoleUser, owner: str) -> bool:
    return "*" in user.organisations or owner in user.organisations


def _candidates(result: FaceMatches | UserMatches) -> list[dict[str, Any]]:
    if isinstance(result, FaceMatches):
        return [
            {"rank": i + 1, "id": m.face.face_id, "similarity": m.similarity, "face": stored_face_json(m.face)}
            for i, m in enumerate(result.matches)
        ]
    return [
        {"rank": i + 1, "id": m.user_id, "similarity": m.similarity, "user_id": m.user_id}
        for i, m in enumerate(result.matches)
    ]


def _facts(outcome: GateOutcome, result: FaceMatches | UserMatches, searched: FoundFace | None) -> dict[str, Any]:
    use_case = outcome.subject.use_case
    fairness = outcome.decision.fairness
    facts: dict[str, Any] = {
        "use_case": use_case.use_case_id if use_case else None,
        "purpose": use_case.purpose if use_case else None,
        "case_reference": outcome.case_reference,
        "collection": outcome.target.collection,
        "collection_size": outcome.target.size,
        "threshold_requested": outcome.threshold_requested,
        "threshold_applied": outcome.threshold_applied,
        "policies": list(outcome.decision.policies),
        "model_version": result.model_version,
        "searched_face_id": getattr(result, "searched_face_id", None),
    }
    if fairness is not None:
        facts.update(
            expected_false_candidates=fairness.expected,
            worst_group=fairness.worst_group,
            worst_group_fmr=fairness.worst_fmr,
            fairness_audit=fairness.audit,
        )
    if searched is not None:
        face = searched.face
        facts["probe"] = {
            "confidence": face.confidence,
            "brightness": face.quality.brightness,
            "sharpness": face.quality.sharpness,
            "pose": {"roll": face.pose.roll, "yaw": face.pose.yaw, "pitch": face.pose.pitch},
        }
    return facts
