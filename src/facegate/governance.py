"""Who may use facegate for what: organisations, registered use cases, keys, policy templates — and the gate
that decides each request and the audit records that prove what happened.

Every change here is written to the store (bumping its governance generation, so the very next request sees
it) and to the audit log. The gate itself is ``facegate.policy.gate.decide``, a pure function; this module
gathers its inputs, caches them per governance generation, and turns obligations into the parameters the
service actually runs with.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facegate.audit import AuditLog
from facegate.config import DEFAULT_OWNER
from facegate.errors import InvalidParameterException, ResourceNotFoundException
from facegate.fairness.calibrated import AuditCurves
from facegate.keys import IssuedKey, KeyRing, Principal
from facegate.notifications import NOTIFICATION_CHANNELS, notification_channels
from facegate.policy.gate import Circumstances, CompiledPolicies, Decision, PolicyInvalid, Subject, Target, decide
from facegate.policy.templates import CATEGORIES, PURPOSES, TEMPLATES, parse_params
from facegate.results import (
    Comparison,
    Detection,
    FaceMatches,
    FacesDeleted,
    FacesLoaded,
    FacesPurged,
    IndexResult,
    JobStarted,
    Result,
    ReviewOutcome,
    UserMatches,
    VideoBatch,
    VideoJobResults,
)
from facegate.store import AccessKey, ObjectSource, Organisation, PolicyState, Store, UseCase

OPERATOR = "operator"
# Request members that carry a threshold or a result cap, per operation.
THRESHOLD_MEMBER = {
    "SearchFaces": "FaceMatchThreshold",
    "SearchFacesByImage": "FaceMatchThreshold",
    "CompareFaces": "SimilarityThreshold",
    "SearchUsers": "UserMatchThreshold",
    "SearchUsersByImage": "UserMatchThreshold",
    "StartFaceSearch": "FaceMatchThreshold",
}
RESULTS_MEMBER = {
    "SearchFaces": "MaxFaces",
    "SearchFacesByImage": "MaxFaces",
    "SearchUsers": "MaxUsers",
    "SearchUsersByImage": "MaxUsers",
}
DEFAULT_THRESHOLD = 80.0
# A request's own values are kept in its audit record up to this length; longer ones as a prefix, length, hash.
MAX_RECORDED_CHARS = 256
MAX_RECORDED_ITEMS = 1000
TALLY_FLUSH_S = 60.0


def bounded(value: Any) -> Any:
    """``value`` as the audit may keep it: strings and lists capped, so no request can inflate the log."""
    if isinstance(value, str):
        if len(value) <= MAX_RECORDED_CHARS:
            return value
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
        return {"truncated": value[:64], "length": len(value), "sha256": digest}
    if isinstance(value, dict):
        return {
            bounded(k) if isinstance(k, str) and len(k) <= MAX_RECORDED_CHARS else str(k)[:64]: bounded(v)
            for k, v in list(value.items())[:MAX_RECORDED_ITEMS]
        }
    if isinstance(value, list | tuple):
        items = [bounded(v) for v in value[:MAX_RECORDED_ITEMS]]
        if len(value) > MAX_RECORDED_ITEMS:
            items.append({"omitted": len(value) - MAX_RECORDED_ITEMS})
        return items
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Clock:
    """Wall time, unless FACEGATE_CLOCK_FILE names a file holding the time to use (an ISO date or epoch
    seconds) — for drills and tests that replay a policy timeline without waiting for it."""

    def __init__(self, clock_file: str | None = None) -> None:
        self.clock_file = clock_file if clock_file is not None else os.environ.get("FACEGATE_CLOCK_FILE")

    def now(self) -> float:
        if not self.clock_file:
            return time.time()
        from facegate.policy.templates import epoch

        text = Path(self.clock_file).read_text().strip()
        return float(text) if text.replace(".", "", 1).isdigit() else float(epoch(text))


@dataclass(frozen=True)
class RetentionDue:
    """One collection's retention as of now: its rule, why, and the faces past it."""

    organisation: str
    collection: str
    rule: dict
    reason: str
    face_ids: list[str]


@dataclass(frozen=True)
class GateOutcome:
    """A decision with everything the audit record and the response need."""

    decision: Decision
    subject: Subject
    target: Target
    params: dict  # the parameters the service runs with (obligations applied)
    threshold_requested: float | None
    threshold_applied: float | None
    now: float
    case_reference: str | None = None
    consent_reference: str | None = None


# The active fairness audit report (its JSON), a store setting: governance state every server shares.
AUDIT_SETTING = "fairness_audit"


class Governance:
    def __init__(
        self, store: Store, keys: KeyRing, audit: AuditLog, clock: Clock | None = None, model_version: str | None = None
    ) -> None:
        self.store = store
        self.model_version = model_version
        self.keys = keys
        self.audit = audit
        self.clock = clock or Clock()
        self._lock = threading.Lock()
        self._generation = -1
        self._policies: CompiledPolicies | None = None
        self._fairness: AuditCurves | None = None
        self._subjects: dict[str, tuple[int, Subject]] = {}
        self._tally: dict[tuple[str, str], int] = {}
        self._tally_since = time.time()
        self._tally_lock = threading.Lock()

    # Organisations

    def create_organisation(
        self, name: str, category: str, jurisdiction: str = "", groups: tuple[str, ...] = (), actor: str = OPERATOR
    ) -> Organisation:
        if category not in CATEGORIES:
            raise InvalidParameterException(f"Category {category!r} is not one of: {', '.join(sorted(CATEGORIES))}.")
        organisation = Organisation(name, category, jurisdiction, "active", tuple(groups), time.time())
        self.store.add_organisation(organisation)
        self.record_event(
            "organisation_created",
            actor,
            organisation=name,
            category=category,
            jurisdiction=jurisdiction,
            groups=list(groups),
        )
        return organisation

    def set_organisation_status(self, name: str, status: str, reason: str, actor: str = OPERATOR) -> None:
        self._organisation(name)
        if status not in ("active", "suspended", "revoked"):
            raise InvalidParameterException(f"Status {status!r} is not active, suspended or revoked.")
        self.store.update_organisation(name, status=status, reason=reason)
        event = "revocation" if status != "active" else "reinstatement"
        self.record_event(event, actor, organisation=name, status=status, reason=reason)

    def set_organisation_groups(self, name: str, groups: tuple[str, ...], reason: str, actor: str = OPERATOR) -> None:
        self._organisation(name)
        self.store.update_organisation(name, groups=tuple(groups))
        self.record_event("groups_changed", actor, organisation=name, groups=list(groups), reason=reason)

    def organisations(self) -> list[Organisation]:
        return self.store.list_organisations()

    # Object sources (S3Object's Bucket)

    def add_source(self, source: ObjectSource, reason: str, actor: str = OPERATOR) -> ObjectSource:
        if source.owner != DEFAULT_OWNER:
            self._organisation(source.owner)
        self.store.add_source(source)
        self.record_event(
            "source_added",
            actor,
            organisation=source.owner,
            source=source.name,
            kind=source.kind,
            location=source.location,
            reason=reason,
        )
        return source

    def remove_source(self, owner: str, name: str, reason: str, actor: str = OPERATOR) -> None:
        if not self.store.remove_source(owner, name):
            raise ResourceNotFoundException(f"Organisation {owner} has no source {name}.")
        self.record_event("source_removed", actor, organisation=owner, source=name, reason=reason)

    def sources(self, owner: str | None = None) -> list[ObjectSource]:
        return self.store.list_sources(owner)

    # Face thumbnails for reviewers (a collection setting, off by default: Rekognition keeps no images)

    def set_thumbnails(self, owner: str, collection_id: str, keep: bool, reason: str, actor: str = OPERATOR) -> None:
        from facegate.crops import thumbnails_setting

        collection = self.store.get_collection(owner, collection_id)
        if collection is None:
            raise ResourceNotFoundException(f"The collection id: {collection_id} does not exist")
        self.store.set_setting(thumbnails_setting(collection), "on" if keep else None)
        self.record_event(
            "thumbnails_setting", actor, organisation=owner, collection=collection_id, keep=keep, reason=reason
        )

    # Notification channels (a video job's SNS topic, delivered to a webhook)

    def add_notification(self, owner: str, topic_arn: str, url: str, reason: str, actor: str = OPERATOR) -> None:
        if owner != DEFAULT_OWNER:
            self._organisation(owner)
        if not re.fullmatch(r"arn:aws:sns:[^:]*:\d{12}:[A-Za-z0-9_-]{1,256}", topic_arn):
            raise InvalidParameterException(f"{topic_arn!r} is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME).")
        if not re.match(r"^https?://[^\s/@]+(/|$)", url):
            raise InvalidParameterException(f"Webhook {url!r} is not an http(s) URL without credentials in it.")
        channels = notification_channels(self.store)
        channels.setdefault(owner, {})[topic_arn] = url
        self.store.set_setting(NOTIFICATION_CHANNELS, json.dumps(channels))
        self.record_event("notification_added", actor, organisation=owner, topic=topic_arn, url=url, reason=reason)

    def remove_notification(self, owner: str, topic_arn: str, reason: str, actor: str = OPERATOR) -> None:
        channels = notification_channels(self.store)
        if channels.get(owner, {}).pop(topic_arn, None) is None:
            raise ResourceNotFoundException(f"Organisation {owner} has no notification channel {topic_arn}.")
        self.store.set_setting(NOTIFICATION_CHANNELS, json.dumps(channels))
        self.record_event("notification_removed", actor, organisation=owner, topic=topic_arn, reason=reason)

    def notifications(self) -> dict[str, dict[str, str]]:
        return notification_channels(self.store)

    def _organisation(self, name: str) -> Organisation:
        organisation = self.store.get_organisation(name)
        if organisation is None:
            raise ResourceNotFoundException(f"Organisation {name} is not registered.")
        return organisation

    # Use cases

    def create_use_case(
        self,
        organisation: str,
        purpose: str,
        *,
        collections: tuple[str, ...] | None = None,
        valid_from: float | None = None,
        valid_until: float | None = None,
        legal_basis: str | None = None,
        authorisation_reference: str | None = None,
        approver: str | None = None,
        actor: str = OPERATOR,
    ) -> UseCase:
        self._organisation(organisation)
        if purpose not in PURPOSES:
            raise InvalidParameterException(f"Purpose {purpose!r} is not one of: {', '.join(sorted(PURPOSES))}.")
        use_case = UseCase(
            use_case_id="uc-" + uuid.uuid4().hex[:12],
            organisation=organisation,
            purpose=purpose,
            collections=tuple(collections) if collections else None,
            valid_from=valid_from if valid_from is not None else 0.0,
            valid_until=valid_until,
            legal_basis=legal_basis,
            authorisation_reference=authorisation_reference,
            approver=approver,
            status="active",
            created_at=time.time(),
        )
        self.store.add_use_case(use_case)
        self.record_event(
            "use_case_registered",
            actor,
            organisation=organisation,
            use_case=use_case.use_case_id,
            purpose=purpose,
            collections=list(collections or []),
            approver=approver,
            legal_basis=legal_basis,
            authorisation_reference=authorisation_reference,
        )
        return use_case

    def use_cases(self, organisation: str | None = None) -> list[UseCase]:
        return self.store.list_use_cases(organisation)

    def use_case(self, use_case_id: str) -> UseCase | None:
        return self.store.get_use_case(use_case_id)

    def revoke_use_case(self, use_case_id: str, reason: str, actor: str = OPERATOR) -> None:
        use_case = self.store.get_use_case(use_case_id)
        if use_case is None:
            raise ResourceNotFoundException(f"Use case {use_case_id} is not registered.")
        self.store.set_use_case_status(use_case_id, "revoked", reason)
        self.record_event("revocation", actor, organisation=use_case.organisation, use_case=use_case_id, reason=reason)

    # Keys

    def issue_key(
        self,
        *,
        use_case_id: str | None = None,
        organisation: str | None = None,
        role: str = "client",
        actor: str = OPERATOR,
    ) -> IssuedKey:
        """A key for a registered use case (its organisation owns the collections), or a bare organisation key."""
        if use_case_id is not None:
            use_case = self.store.get_use_case(use_case_id)
            if use_case is None:
                raise ResourceNotFoundException(f"Use case {use_case_id} is not registered.")
            organisation = use_case.organisation
        if organisation is None:
            raise InvalidParameterException("A key needs a use case or an organisation.")
        issued = self.keys.issue(organisation, role=role, use_case_id=use_case_id)
        self.record_event(
            "key_issued",
            actor,
            organisation=organisation,
            use_case=use_case_id,
            access_key=issued.access_key_id,
            role=role,
        )
        return issued

    def key_owner(self, access_key_id: str) -> str | None:
        """The organisation an access key belongs to (None for no such key); never its secret."""
        key = self.store.get_key(access_key_id)
        return key.owner if key is not None else None

    def revoke_key(self, access_key_id: str, reason: str, actor: str = OPERATOR) -> None:
        key = self.store.get_key(access_key_id)
        if key is None:
            raise ResourceNotFoundException(f"Access key {access_key_id} does not exist.")
        self.store.revoke_key(access_key_id)
        self.record_event(
            "revocation",
            actor,
            organisation=key.owner,
            use_case=key.use_case_id,
            access_key=access_key_id,
            reason=reason,
        )

    # Policies

    def policy_states(self) -> dict[str, PolicyState]:
        return self.store.policy_states()

    def activate(self, template: str, settings: list[str], reason: str, actor: str = OPERATOR) -> PolicyState:
        """Activate (or re-parameterise: extend, shorten) a template. Refused if the resulting policy set fails
        validation against the schema."""
        definition = self._template(template)
        current = self.store.policy_states().get(template)
        try:
            params = parse_params(definition, settings, current.params if current else None)
        except ValueError as exc:
            raise InvalidParameterException(str(exc)) from None
        state = PolicyState(template, True, params, time.time(), reason)
        self._validate({**self.store.policy_states(), template: state})
        self.store.set_policy_state(state)
        self.record_event("policy_change", actor, template=template, change="activated", params=params, reason=reason)
        return state

    def deactivate(self, template: str, reason: str, actor: str = OPERATOR) -> None:
        self._template(template)
        current = self.store.policy_states().get(template)
        params = current.params if current else dict(TEMPLATES[template].defaults)
        self.store.set_policy_state(PolicyState(template, False, params, time.time(), reason))
        self.record_event("policy_change", actor, template=template, change="deactivated", reason=reason)

    def _template(self, name: str):
        definition = TEMPLATES.get(name)
        if definition is None or definition.always_on:
            choices = ", ".join(n for n, t in TEMPLATES.items() if not t.always_on)
            raise InvalidParameterException(f"No policy template {name!r}; templates: {choices}.")
        return definition

    @staticmethod
    def _validate(states: dict[str, PolicyState]) -> CompiledPolicies:
        try:
            return CompiledPolicies.compile(states)
        except PolicyInvalid as exc:
            raise InvalidParameterException(f"Not activated: {exc}") from None

    # Fairness audits the gate relies on

    def activate_audit(self, report_path: Path, reason: str, actor: str = OPERATOR) -> AuditCurves:
        """Make an audit report the one the gate reads. The report itself goes into the store, so every server
        on a shared database gates by it; a copy is kept under the data directory, by model version, to read."""
        text = Path(report_path).read_text()
        report = json.loads(text)
        from facegate.engine.scores import RAW, active_scores

        measured, served = report.get("scores", {}).get("served", RAW), active_scores(self.keys.data_dir)
        if measured != served:  # the gate must read the error rates of the similarities it actually serves
            raise InvalidParameterException(
                f"The audit measured {measured} scores; this facegate serves {served}: audit again "
                "(`facegate fairness audit` measures the scores served)."
            )
        curves = AuditCurves.from_report(report)
        if self.model_version is not None and curves.model_version != self.model_version:
            raise InvalidParameterException(
                f"The audit measured model {curves.model_version}; this facegate embeds with {self.model_version}."
            )
        # A copy on this host, by model version, for people to read; gates read the report from the store.
        home = Path(self.keys.data_dir) / "fairness" / "audits" / curves.model_version
        home.mkdir(parents=True, exist_ok=True)
        (home / f"{curves.audit_id}.json").write_text(text)
        self.store.set_setting(AUDIT_SETTING, text)
        self.record_event(
            "fairness_audit_activated",
            actor,
            audit=curves.audit_id,
            dataset=curves.dataset,
            model_version=curves.model_version,
            reason=reason,
        )
        return curves

    def activate_scores(self, calibration_id: str, reason: str, actor: str = OPERATOR) -> None:
        """Serve a score calibration ("raw": dlib's distances) from the next start; audited. The active fairness
        audit measured the old scores, so it stops gating: audit and activate again."""
        from facegate.engine.scores import activate_scores

        activate_scores(self.keys.data_dir, calibration_id)
        self.store.set_setting(AUDIT_SETTING, None)
        self.record_event("scores_activated", actor, scores=calibration_id, reason=reason)

    def active_audit(self) -> AuditCurves | None:
        report = self.active_audit_report()
        return AuditCurves.from_report(report) if report is not None else None

    def active_audit_report(self) -> dict | None:
        """The fairness audit report the gate reads, as JSON."""
        value = self.store.get_setting(AUDIT_SETTING)
        if not value:
            return None
        if value.lstrip().startswith("{"):
            return json.loads(value)
        # Deployments activated before reports were stored kept only the copy's path.
        return json.loads(Path(value).read_text()) if Path(value).exists() else None

    # Retention

    def set_retention(
        self,
        owner: str,
        collection_id: str,
        *,
        max_days: int | None,
        until: float | None,
        reason: str,
        actor: str = OPERATOR,
    ) -> dict | None:
        """Give a collection a retention rule: faces older than ``max_days`` (since they were indexed, the last
        interaction facegate sees) expire, and every face expires at ``until`` (the purpose's end)."""
        collection = self.store.get_collection(owner, collection_id)
        if collection is None:
            raise ResourceNotFoundException(f"The collection id: {collection_id} does not exist")
        rule = None if max_days is None and until is None else {"max_days": max_days, "until": until}
        self.store.set_retention(collection, rule)
        self.record_event(
            "retention_set", actor, organisation=owner, collection=collection_id, rule=rule, reason=reason
        )
        return rule

    def expired(self) -> list[RetentionDue]:
        """What retention asks to delete now: per collection with a rule (or an Illinois collection while BIPA's
        template is active), the faces past it. Deleting them is the governed PurgeFaces operation's work."""
        now = self.clock.now()
        rules = {c.pk: (c, dict(rule)) for c, rule in self.store.retention_rules()}
        bipa = self.store.policy_states().get("illinois-bipa")
        if bipa is not None and bipa.active:
            bipa_days = int(bipa.params.get("retention_years", 3)) * 365
            for collection in self.store.collections_tagged("jurisdiction", "US-IL"):
                _, rule = rules.get(collection.pk, (collection, {"max_days": None, "until": None}))
                rule["max_days"] = min(rule.get("max_days") or bipa_days, bipa_days)
                rule["basis"] = "illinois-bipa"
                rules[collection.pk] = (collection, rule)
        due = []
        for collection, rule in rules.values():
            if rule.get("until") is not None and now >= rule["until"]:
                cutoff, why = float("inf"), "the collection's purpose ended"
            elif rule.get("max_days") is not None:
                cutoff, why = now - rule["max_days"] * 86400, f"older than {rule['max_days']} days"
            else:
                cutoff, why = float("-inf"), "within retention"
            faces = [f.face_id for f in self.store.faces_indexed_before(collection, cutoff)]
            due.append(RetentionDue(collection.owner, collection.collection_id, rule, why, faces))
        return due

    # The gate

    def _current(self) -> tuple[CompiledPolicies, int]:
        generation = self.store.governance_generation()
        with self._lock:
            if generation != self._generation or self._policies is None:
                self._policies = CompiledPolicies.compile(self.store.policy_states())
                self._fairness = self.active_audit()
                self._subjects.clear()
                self._generation = generation
            return self._policies, generation

    def _subject(self, principal: Principal, generation: int) -> Subject:
        """The key's facts as of ``generation``; cached until governance changes (a revocation included)."""
        cached = self._subjects.get(principal.access_key_id)
        if cached is not None and cached[0] == generation:
            return cached[1]
        if principal.is_operator:
            key = AccessKey(principal.access_key_id, principal.owner, principal.role, b"", 0.0)
        else:
            key = self.store.get_key(principal.access_key_id)
        use_case = self.store.get_use_case(key.use_case_id) if key and key.use_case_id else None
        subject = Subject(key, self.store.get_organisation(key.owner), use_case)
        self._subjects[principal.access_key_id] = (generation, subject)
        return subject

    def gate(
        self,
        principal: Principal,
        operation: str,
        params: dict,
        *,
        case_reference: str | None = None,
        consent_reference: str | None = None,
    ) -> GateOutcome:
        """Decide a request before any image is decoded; when allowed, apply the obligations to its params."""
        policies, generation = self._current()
        subject = self._subject(principal, generation)
        target = self._target(principal.owner, params)
        member = THRESHOLD_MEMBER.get(operation)
        requested = params.get(member) if member else None
        if requested is not None and (
            isinstance(requested, bool) or not isinstance(requested, int | float) or not math.isfinite(requested)
        ):
            requested = None  # the service's validation will name the problem
        now = self.clock.now()
        decision = decide(
            policies,
            subject,
            operation,
            target,
            Circumstances(now, case_reference, consent_reference, requested if member else None),
            self._fairness,
        )
        applied = None
        params = dict(params)
        if decision.allowed and member:
            applied = float(requested) if requested is not None else DEFAULT_THRESHOLD
            floor = decision.obligations.min_threshold
            if floor is not None and applied < floor:
                applied = floor
                params[member] = floor
        cap = decision.obligations.max_results
        if decision.allowed and cap and operation in RESULTS_MEMBER:
            results = RESULTS_MEMBER[operation]
            if not isinstance(params.get(results), int) or params[results] > cap:
                params[results] = cap
        return GateOutcome(
            decision, subject, target, params, requested, applied, now, case_reference, consent_reference
        )

    def _target(self, owner: str, params: dict) -> Target:
        collection_id = params.get("CollectionId")
        arn = params.get("ResourceArn")
        if collection_id is None and isinstance(arn, str) and "collection/" in arn:
            collection_id = arn.rsplit("collection/", 1)[1]
        if not isinstance(collection_id, str):
            return Target()
        collection = self.store.get_collection(owner, collection_id)
        if collection is None:
            return Target(collection_id)
        jurisdiction = self.store.tags(collection).get("jurisdiction", "")
        return Target(collection_id, collection.face_count, jurisdiction)

    # Audit

    def record_request(
        self, outcome: GateOutcome | None, principal: Principal | None, operation: str, **facts: Any
    ) -> dict:
        """Append one request's record; raises AuditUnavailable (the caller fails closed) if it cannot."""
        return self.audit.append(self._request_record(outcome, principal, operation, facts))

    def record_requests(self, requests: list[tuple[GateOutcome | None, Principal | None, str, dict]]) -> list[dict]:
        """Append several requests' records in one transaction (one disk sync), in order."""
        return self.audit.append_many([self._request_record(*request) for request in requests])

    def _request_record(
        self, outcome: GateOutcome | None, principal: Principal | None, operation: str, facts: dict[str, Any]
    ) -> dict:
        record: dict[str, Any] = {"event": "request", "operation": operation}
        if principal is not None:
            record.update(access_key=principal.access_key_id, organisation=principal.owner)
            if principal.is_operator:
                record["actor"] = principal.actor
        if outcome is not None:
            use_case = outcome.subject.use_case
            record.update(
                time=outcome.now,
                use_case=use_case.use_case_id if use_case else None,
                purpose=use_case.purpose if use_case else None,
                case_reference=outcome.case_reference,
                consent_reference=outcome.consent_reference,
                collection=outcome.target.collection,
                collection_size=outcome.target.size,
                threshold_requested=outcome.threshold_requested,
                threshold_applied=outcome.threshold_applied,
                policies=list(outcome.decision.policies),
                policy_set_hash=outcome.decision.policy_set_hash,
                human_review_required=outcome.decision.obligations.human_review,
                reviewers_required=outcome.decision.obligations.reviewers,
            )
            fairness = outcome.decision.fairness
            if fairness is not None:
                record.update(
                    fairness_audit=fairness.audit,
                    expected_false_candidates=round(fairness.expected, 6),
                    worst_group=fairness.worst_group,
                    worst_group_fmr=fairness.worst_fmr,
                )
        record.update({k: v for k, v in facts.items() if v is not None})
        return bounded(record)

    def tally_unauthenticated(self, source: str, error_code: str) -> None:
        """Count a request refused before anyone was authenticated. Each is counted; they reach the log as one
        record per source and error code each minute (``flush_unauthenticated``), so a flood of garbage costs
        a bounded number of records and disk syncs."""
        with self._tally_lock:
            key = (source[:64], error_code)
            self._tally[key] = self._tally.get(key, 0) + 1

    def flush_unauthenticated(self) -> None:
        with self._tally_lock:
            tally, since = self._tally, self._tally_since
            self._tally, self._tally_since = {}, time.time()
        now = time.time()
        records = [
            {
                "event": "unauthenticated_requests",
                "source": source,
                "error_code": code,
                "count": count,
                "since": since,
                "time": now,
                "decision": "error",
            }
            for (source, code), count in sorted(tally.items())
        ]
        if records:
            self.audit.append_many(records)

    def start_tally_flusher(self) -> threading.Event:
        """Flush the unauthenticated tally every minute on a thread, until the returned event is set."""
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(TALLY_FLUSH_S):
                try:
                    self.flush_unauthenticated()
                except Exception:  # the next flush retries; requests are unaffected
                    logging.getLogger("facegate.server").exception("flushing the unauthenticated tally failed")

        threading.Thread(target=run, name="facegate-audit-tally", daemon=True).start()
        return stop

    @staticmethod
    def summarise_result(operation: str, result: Result) -> dict[str, Any]:
        """What the audit keeps of a result: counts and matched ids with similarities, never images."""
        facts: dict[str, Any] = {}
        if isinstance(result, FaceMatches):
            facts["matches"] = [
                {"face_id": m.face.face_id, "similarity": round(m.similarity, 4)} for m in result.matches
            ]
            facts["faces_found"] = len(result.matches)
        elif isinstance(result, Comparison):  # the target's faces are not stored: they have no face id
            facts["matches"] = [{"face_id": None, "similarity": round(m.similarity, 4)} for m in result.matches]
            facts["faces_found"] = len(result.matches) + len(result.unmatched)
        elif isinstance(result, UserMatches):
            facts["matches"] = [{"user_id": m.user_id, "similarity": round(m.similarity, 4)} for m in result.matches]
        elif isinstance(result, IndexResult):
            facts["faces_found"] = len(result.records) + len(result.unindexed)
            facts["indexed_face_ids"] = [r.face.face_id for r in result.records]
        elif isinstance(result, Detection):
            facts["faces_found"] = len(result.faces)
        elif isinstance(result, FacesDeleted | FacesPurged):
            facts["deleted_face_ids"] = list(result.deleted)
        elif isinstance(result, FacesLoaded):
            facts["faces_found"] = len(result.loaded)
            facts["indexed_face_ids"] = list(result.loaded)
        elif isinstance(result, ReviewOutcome):
            facts.update(review_case=result.case.case_id, review_status=result.case.status)
            facts["matches"] = [
                {"face_id": m.face.face_id, "similarity": round(m.similarity, 4)} for m in result.face_matches
            ]
            facts["matches"] += [
                {"user_id": m.user_id, "similarity": round(m.similarity, 4)} for m in result.user_matches
            ]
        elif isinstance(result, JobStarted):
            facts["job_id"] = result.job_id
        elif isinstance(result, VideoJobResults):
            facts.update(job_id=result.job.job_id, job_status=result.job.status)
            facts["results_returned"] = len(result.persons) + len(result.faces)
        elif isinstance(result, VideoBatch):  # every person matched, with when and to which faces
            facts["frames"] = [result.frames[0], result.frames[-1]] if result.frames else []
            if not result.persons:
                facts["faces_found"] = len(result.faces)
            facts["matches"] = [
                {
                    "timestamp_ms": p.timestamp_ms,
                    "person": p.index,
                    "face_ids": [m.face.face_id for m in p.matches],
                    "similarities": [round(m.similarity, 4) for m in p.matches],
                }
                for p in result.persons
            ]
        return facts

    def record_event(self, event: str, actor: str, **facts: Any) -> None:
        """Append a governance or maintenance event (not a request) to the audit log."""
        self.audit.append(bounded({"event": event, "actor": actor, "time": self.clock.now(), **facts}))
