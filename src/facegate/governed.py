"""The one governed operation every caller uses: HTTP, the CLI, the Python API, bulk indexing, the ACLU
experiment (and later the console, video jobs and distributed workers).

    principal → policy gate (Cedar) → [intent record, for a change] → service operation → result summary →
    durable audit record → outcome

It fails closed: a change whose intent cannot be audited is refused before anything is touched; a request
whose outcome cannot be audited is refused (a change made meanwhile stays named by its intent, which
``facegate audit verify`` reports as an intent without an outcome). Nothing else calls the service's
operations (a test reads the source to hold that).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from facegate.errors import AccessDeniedException, FacegateError, InternalServerError
from facegate.governance import GateOutcome, Governance
from facegate.keys import Principal
from facegate.results import FacesPurged, IndexResult, PersonMatch, Result, VideoBatch
from facegate.review import ReviewDesk
from facegate.service import FaceService
from facegate.sources import resolve_images
from facegate.store import ReviewCase, VideoJob
from facegate.tracking import PersonTracker
from facegate.video import persons_for_review

log = logging.getLogger("facegate")
RETENTION_ACTOR = "retention"

# Operations that change what the store holds: each gets an intent record before the change.
MUTATIONS = frozenset(
    {
        "CreateCollection",
        "DeleteCollection",
        "IndexFaces",
        "DeleteFaces",
        "CreateUser",
        "DeleteUser",
        "AssociateFaces",
        "DisassociateFaces",
        "TagResource",
        "UntagResource",
        "PurgeFaces",
        "LoadFaces",
        "StartFaceSearch",
        "StartFaceDetection",
    }
)


@dataclass(frozen=True)
class RequestContext:
    """What a caller knows about a request beyond its parameters."""

    case_reference: str | None = None
    consent_reference: str | None = None
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    image_sha256: list[str] | None = None  # the wire knows them before decoding; else taken from the params
    started: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Outcome:
    """An allowed, executed and audited request: the operation's typed result and what the gate applied (and
    the review case its matches went to, when its use case obliges human review)."""

    result: Result
    gate: GateOutcome
    request_id: str
    audit_seq: int
    review_case: ReviewCase | None = None


class GovernedService:
    """The gate, the service and the audit log, composed into the only way to run a face operation."""

    def __init__(self, governance: Governance, service: FaceService, review: ReviewDesk | None = None) -> None:
        self.governance = governance
        self.service = service
        self.review = review or ReviewDesk(governance.store, governance)

    @property
    def operations(self) -> frozenset[str]:
        return self.service.operations

    def execute(
        self, principal: Principal, operation: str, params: dict, context: RequestContext | None = None
    ) -> Outcome:
        """Decide, run and audit one request. Raises the request's FacegateError (marked ``audited``), or
        AccessDeniedException for a denial, or AuditUnavailable when the audit log cannot be written."""
        context = context or RequestContext()
        facts = {"request_id": context.request_id, "image_sha256": context.image_sha256 or image_digests(params)}
        if isinstance(params.get("Video"), dict):
            facts["video"] = params["Video"]
        outcome = self._decide(principal, operation, params, context, facts)
        intent = self._intent(outcome, principal, operation, facts) if operation in MUTATIONS else None
        try:
            # S3Object images are read only once the gate allows the request, and audited by their SHA-256.
            params = resolve_images(self.governance.store, principal.owner, outcome.params, self.governance.keys)
            if params is not outcome.params:  # every image's digest, Bytes and S3Object alike, in member order
                facts["image_sha256"] = image_digests(params)
            result = self.service.call(principal.owner, operation, params, _requester(principal, context, outcome))
        except Exception as raised:
            raise self._failed(raised, outcome, principal, operation, context, facts, intent) from None
        facts.update(Governance.summarise_result(operation, result))  # what was found, withheld or not
        case = None
        if self.review.applies(outcome, operation, result):
            case = self.review.open_case(outcome, principal, operation, result, context.request_id, _probe(params))
            facts.update(review_case=case.case_id, matches_withheld=case.withheld)
            if case.withheld:  # two-person review: no match leaves before two reviewers confirm it
                result = self.review.withhold(result)
        entry = self.governance.record_request(
            outcome,
            principal,
            operation,
            decision="allow",
            latency_ms=_ms(context.started),
            model_version=getattr(result, "model_version", None),  # where the operation reports the face model
            scores=getattr(result, "scores", None),  # and the score calibration its similarities came from
            intent_seq=intent,
            **facts,
        )
        return Outcome(result, outcome, context.request_id, entry["seq"], case)

    def index_many(
        self, principal: Principal, requests: list[dict], contexts: list[RequestContext] | None = None
    ) -> list[Outcome | FacegateError]:
        """IndexFaces for several images (bulk indexing), each gated and audited as ``execute`` would, with one
        network run over the allowed images' faces and one audit transaction for the intents and one for the
        outcomes. Each result is that image's Outcome, or the (audited) error that stopped it alone."""
        contexts = contexts or [RequestContext() for _ in requests]
        results: list[Outcome | FacegateError | None] = [None] * len(requests)
        allowed: list[tuple[int, GateOutcome, dict]] = []
        for i, (params, context) in enumerate(zip(requests, contexts, strict=True)):
            facts = {"request_id": context.request_id, "image_sha256": context.image_sha256 or image_digests(params)}
            try:
                allowed.append((i, self._decide(principal, "IndexFaces", params, context, facts), facts))
            except FacegateError as exc:
                results[i] = exc
        intents = self.governance.record_requests(
            [(outcome, principal, "IndexFaces", {"event": "intent", **facts}) for _, outcome, facts in allowed]
        )
        try:
            done = self.service.index_many(principal.owner, [outcome.params for _, outcome, _ in allowed])
        except Exception as raised:  # the whole batch failed: each intent is closed with the error
            error = (
                raised
                if isinstance(raised, FacegateError)
                else InternalServerError("facegate failed to process the request; it has been logged.")
            )
            if not isinstance(raised, FacegateError):
                log.error("IndexFaces batch failed", exc_info=raised)
            self.governance.record_requests(
                [
                    (outcome, principal, "IndexFaces", _error_facts(error, contexts[i], facts, intent["seq"]))
                    for (i, outcome, facts), intent in zip(allowed, intents, strict=True)
                ]
            )
            error.audited = True
            raise error from None
        records: list[tuple] = []
        slots: list[tuple[int, GateOutcome, IndexResult] | None] = []
        for (i, outcome, facts), intent, result in zip(allowed, intents, done, strict=True):
            if isinstance(result, FacegateError):
                result.audited = True
                results[i] = result
                records.append(
                    (outcome, principal, "IndexFaces", _error_facts(result, contexts[i], facts, intent["seq"]))
                )
                slots.append(None)
                continue
            summary = {**facts, **Governance.summarise_result("IndexFaces", result)}
            summary.update(decision="allow", latency_ms=_ms(contexts[i].started), intent_seq=intent["seq"])
            summary.update(model_version=result.model_version, repeated=result.repeated or None)
            records.append((outcome, principal, "IndexFaces", summary))
            slots.append((i, outcome, result))
        for slot, entry in zip(slots, self.governance.record_requests(records), strict=True):
            if slot is not None:
                i, outcome, result = slot
                results[i] = Outcome(result, outcome, contexts[i].request_id, entry["seq"])
        return results  # type: ignore[return-value]

    def analyse_video(self, job: VideoJob, frames: list[tuple[int, np.ndarray]], tracker: PersonTracker) -> VideoBatch:
        """One batch of a running video job, governed like a request of its own: the gate decides again as the
        job's requester (a revocation or a kill switch stops the job here, AccessDeniedException), the service
        analyses the frames, and the batch's matches (persons, timestamps, face ids, similarities) are audited."""
        principal, context = _requester_of(job)
        operation = f"Start{job.api}"
        facts = {"request_id": str(uuid.uuid4()), "job_id": job.job_id}
        outcome = self._decide(principal, operation, job.request, context, facts, event="video-batch")
        try:
            batch = self.service.analyse_video(principal.owner, job, frames, tracker)
        except Exception as raised:
            error = self._failed(
                raised, outcome, principal, operation, context, {**facts, "event": "video-batch"}, None
            )
            raise error from None
        facts.update(Governance.summarise_result(operation, batch))
        self.governance.record_request(
            outcome,
            principal,
            operation,
            event="video-batch",
            decision="allow",
            latency_ms=_ms(context.started),
            **facts,
        )
        return batch

    def open_video_reviews(
        self, job: VideoJob, probe_crops: Callable[[dict[int, PersonMatch]], dict[int, bytes]]
    ) -> dict[str, str]:
        """For a face-search job whose use case obliges human review (at Start, or now), a review case per person
        matched, opened before the job is SUCCEEDED: under two-person review GetFaceSearch reports a person's
        matches only once that case is released. ``probe_crops`` cuts each person's best sighting from the video,
        for the reviewers. Returns person index → case id."""
        principal, context = _requester_of(job)
        reviewers = self._video_reviewers(job, principal, context)
        if not reviewers or job.api != "FaceSearch":
            return {}
        persons = persons_for_review(self.service.video_persons(principal.owner, job))
        crops = probe_crops({p.index: p.best for p in persons}) if persons else {}
        return self.review.open_video_cases(job, principal, reviewers, persons, crops)

    def job_finished(self, job: VideoJob) -> None:
        """How a video job ended, in the audit."""
        principal, _ = _requester_of(job)
        self.governance.record_request(
            None,
            principal,
            f"Start{job.api}",
            event="video-job-finished",
            job_id=job.job_id,
            job_status=job.status,
            reason=(job.status_message or "")[:500] or None,
            attempts=job.attempts,
            review_cases=job.review_cases or None,
        )

    def _video_reviewers(self, job: VideoJob, principal: Principal, context: RequestContext) -> int:
        """Reviewers a job's matches need: the obligation at Start, or a stricter one in force now."""
        reviewers = int(job.requester.get("reviewers") or 0)
        try:
            outcome = self.governance.gate(
                principal,
                f"Start{job.api}",
                job.request,
                case_reference=context.case_reference,
                consent_reference=context.consent_reference,
            )
        except Exception:  # the gate could not decide: keep what Start decided
            return reviewers
        obligations = outcome.decision.obligations
        if outcome.decision.allowed and obligations.human_review:
            reviewers = max(reviewers, obligations.reviewers or 1)
        return reviewers

    def purge_expired(self, *, dry_run: bool = False) -> list[dict]:
        """Delete every face past its collection's retention, each collection's as one governed PurgeFaces run
        by the retention operator (faces associated with a user too: the law asks for it); each face's
        deletion is also an audit event. Returns what was (or, with ``dry_run``, would be) deleted."""
        report = []
        for due in self.governance.expired():
            deleted = due.face_ids
            if deleted and not dry_run:
                operator = Principal.operator(due.organisation, actor=RETENTION_ACTOR)
                params = {"CollectionId": due.collection, "FaceIds": due.face_ids, "Reason": f"retention: {due.reason}"}
                purged = self.execute(operator, "PurgeFaces", params).result
                assert isinstance(purged, FacesPurged)
                deleted = list(purged.deleted)
                for face_id in deleted:
                    self.governance.record_event(
                        "deletion",
                        RETENTION_ACTOR,
                        organisation=due.organisation,
                        collection=due.collection,
                        face_id=face_id,
                        reason=f"retention: {due.reason}",
                        basis=due.rule.get("basis", "collection rule"),
                    )
            report.append(
                {
                    "organisation": due.organisation,
                    "collection": due.collection,
                    "rule": due.rule,
                    "reason": due.reason,
                    "deleted": deleted,
                    "dry_run": dry_run,
                }
            )
        return report

    def _decide(
        self,
        principal: Principal,
        operation: str,
        params: dict,
        context: RequestContext,
        facts: dict,
        event: str | None = None,
    ) -> GateOutcome:
        """The gate's decision; a denial (or a gate that fails) is audited and raised."""
        try:
            outcome = self.governance.gate(
                principal,
                operation,
                params,
                case_reference=context.case_reference,
                consent_reference=context.consent_reference,
            )
        except Exception as raised:
            raise self._failed(raised, None, principal, operation, context, facts, None) from None
        if not outcome.decision.allowed:
            self.governance.record_request(
                outcome,
                principal,
                operation,
                decision="deny",
                reason=outcome.decision.reason,
                latency_ms=_ms(context.started),
                **facts,
                **({"event": event} if event else {}),
            )
            raise AccessDeniedException(
                f"Denied by policy {', '.join(outcome.decision.policies) or '(none)'}: {outcome.decision.reason}.",
                audited=True,
            )
        return outcome

    def _intent(self, outcome: GateOutcome, principal: Principal, operation: str, facts: dict) -> int:
        entry = self.governance.record_request(outcome, principal, operation, event="intent", **facts)
        return entry["seq"]

    def _failed(
        self,
        raised: Exception,
        outcome: GateOutcome | None,
        principal: Principal,
        operation: str,
        context: RequestContext,
        facts: dict,
        intent: int | None,
    ) -> FacegateError:
        """Audit a failed request; returns the error to raise (an unexpected one as InternalServerError)."""
        if isinstance(raised, FacegateError):
            error = raised
        else:
            log.error("%s failed", operation, exc_info=raised)
            error = InternalServerError("facegate failed to process the request; it has been logged.")
        self.governance.record_request(outcome, principal, operation, **_error_facts(error, context, facts, intent))
        error.audited = True
        return error


def _probe(params: dict) -> bytes | None:
    """The probe image's bytes (straight off the wire they are still base64 text)."""
    image = params.get("Image")
    data = image.get("Bytes") if isinstance(image, dict) else None
    if isinstance(data, str):
        try:
            return base64.b64decode(data, validate=True)
        except ValueError:
            return None
    return bytes(data) if isinstance(data, bytes | bytearray) else None


def _requester(principal: Principal, context: RequestContext, outcome: GateOutcome) -> dict:
    """Who asked, as a video job keeps it to ask the gate again before each batch (and how many reviewers its
    matches need, as decided at Start)."""
    obligations = outcome.decision.obligations
    return {
        "principal": dataclasses.asdict(principal),
        "case_reference": context.case_reference,
        "consent_reference": context.consent_reference,
        "request_id": context.request_id,
        "reviewers": (obligations.reviewers or 1) if obligations.human_review else 0,
    }


def _requester_of(job: VideoJob) -> tuple[Principal, RequestContext]:
    asked = job.requester
    context = RequestContext(
        case_reference=asked.get("case_reference"), consent_reference=asked.get("consent_reference")
    )
    return Principal(**asked["principal"]), context


def _error_facts(error: FacegateError, context: RequestContext, facts: dict, intent: int | None) -> dict:
    return {
        **facts,
        "decision": "error",
        "error_code": error.code,
        "reason": error.message[:500],
        "latency_ms": _ms(context.started),
        "intent_seq": intent,
    }


def image_digests(params: dict) -> list[str] | None:
    """SHA-256 of each image in the request, in member order (the audit keeps these, never the image): Bytes as
    decoded bytes or, straight off the wire, base64 text."""
    digests = []
    for member in ("Image", "SourceImage", "TargetImage"):
        image = params.get(member)
        data = image.get("Bytes") if isinstance(image, dict) else None
        if isinstance(data, str):
            with contextlib.suppress(ValueError):
                data = base64.b64decode(data, validate=True)
        if isinstance(data, bytes | bytearray):
            digests.append(hashlib.sha256(data).hexdigest())
    return digests or None


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
