"""The policy decision: a pure function of (who, what, which resource, context) over a validated policy set.

``PolicySet.compile`` validates the active templates against the schema (an invalid set cannot be activated);
``decide`` evaluates one request with Cedar. A matching forbid always wins, so activating a template can only
remove access. Cedar skips a policy whose evaluation fails — which would let a broken forbid fail open — so any
evaluation error is a deny here.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources

import cedarpy

from facegate.fairness.calibrated import AuditCurves
from facegate.keys import OPERATOR_ROLE
from facegate.policy.templates import TEMPLATES, Obligation
from facegate.store import AccessKey, Organisation, PolicyState, UseCase

FAR_FUTURE = 2**53


class PolicyInvalid(ValueError):
    """The policy set does not validate against the schema; it is not activated."""


@cache
def schema() -> cedarpy.Schema:
    text = resources.files("facegate.policy").joinpath("schema.cedarschema").read_text()
    return cedarpy.Schema.from_str(text)


@dataclass(frozen=True)
class Obligations:
    min_threshold: float | None = None
    max_results: int | None = None
    human_review: bool = False
    reviewers: int = 0
    max_worst_group_fmr: float | None = None

    def merge(self, other: Obligation) -> Obligations:
        def stricter(a, b, pick):
            return b if a is None else a if b is None else pick(a, b)

        return Obligations(
            min_threshold=stricter(self.min_threshold, other.min_threshold, max),
            max_results=stricter(self.max_results, other.max_results, min),
            human_review=self.human_review or other.human_review,
            reviewers=max(self.reviewers, other.reviewers),
            max_worst_group_fmr=stricter(self.max_worst_group_fmr, other.max_worst_group_fmr, min),
        )


@dataclass(frozen=True)
class Decision:
    allowed: bool
    policies: tuple[str, ...]  # the determining policies: satisfied forbids on deny, satisfied permits on allow
    reason: str
    obligations: Obligations = field(default_factory=Obligations)
    errors: tuple[str, ...] = ()
    policy_set_hash: str = ""
    fairness: FairnessFacts | None = None


@dataclass(frozen=True)
class FairnessFacts:
    """What the active fairness audit says about this search, at the threshold that will be applied."""

    audit: str
    threshold: float
    collection_size: int
    worst_group: str
    worst_fmr: float
    expected: float  # false candidates per search
    calibrated_threshold: float | None  # where the worst group's FMR meets the obligation's target, if any


@dataclass(frozen=True)
class CompiledPolicies:
    """The active templates, validated and parsed once; reused for every request until governance changes."""

    policy_set: cedarpy.PolicySet
    ids: dict[str, str]  # Cedar's policyN → our @id
    entities: list[dict]  # regime data
    obligations: dict[str, Obligation]
    explanations: dict[str, str]
    active: tuple[str, ...]
    digest: str

    @classmethod
    def compile(cls, states: dict[str, PolicyState]) -> CompiledPolicies:
        active = [t for t in TEMPLATES.values() if t.always_on or (t.name in states and states[t.name].active)]
        texts, entities, obligations, explanations = [], [], {}, {}
        for template in active:
            params = {**template.defaults, **(states[template.name].params if template.name in states else {})}
            texts.append(template.cedar())
            entities += template.entities(params)
            obligations.update(template.obligations(params))
            explanations.update(template.explain(params))
        text = "\n".join(texts)
        result = cedarpy.validate_policies(text, schema())
        if not result.validation_passed:
            problems = "; ".join(str(e) for e in result.errors)
            raise PolicyInvalid(f"the policy set does not validate against facegate's schema: {problems}")
        try:
            policy_set = cedarpy.PolicySet.from_str(text)
        except ValueError as exc:
            raise PolicyInvalid(f"the policy set does not parse: {exc}") from None
        ids = {pid: p.annotations.get("id", pid) for pid, p in policy_set.to_pst().static_policies.items()}
        digest = hashlib.sha256((text + json.dumps(entities, sort_keys=True)).encode()).hexdigest()
        return cls(policy_set, ids, entities, obligations, explanations, tuple(t.name for t in active), digest)


@dataclass(frozen=True)
class Subject:
    """The facts about who is asking: the key, its organisation and the use case it was issued for."""

    key: AccessKey
    organisation: Organisation | None
    use_case: UseCase | None


@dataclass(frozen=True)
class Target:
    """What the request touches: a collection (name, size, jurisdiction tag) or the service itself."""

    collection: str | None = None
    size: int = 0
    jurisdiction: str = ""


@dataclass(frozen=True)
class Circumstances:
    now: float
    case_reference: str | None = None
    consent_reference: str | None = None
    threshold: float | None = None


IDENTIFICATION = frozenset(
    {"SearchFaces", "SearchFacesByImage", "SearchUsers", "SearchUsersByImage", "StartFaceSearch", "GetFaceSearch"}
)
DEFAULT_THRESHOLD = 80.0


def decide(
    policies: CompiledPolicies,
    subject: Subject,
    operation: str,
    target: Target,
    when: Circumstances,
    fairness: AuditCurves | None = None,
) -> Decision:
    """Allow or deny one request, with the determining policies and, when allowed, the obligations.

    With a fairness audit, an allowed identification is evaluated a second time with the false candidates it
    should expect at the threshold that will actually be applied (after obligations), so a policy can refuse
    a search whose collection is too large for that threshold."""
    first = _evaluate(policies, subject, operation, target, when, expected_micro=-1, unreachable=False, facts=None)
    if not first.allowed or fairness is None:
        return first
    obligations = first.obligations
    requested = _finite_or(when.threshold, DEFAULT_THRESHOLD)
    threshold = max(requested, obligations.min_threshold or 0.0)
    calibrated, unreachable = None, False
    if obligations.max_worst_group_fmr is not None:
        calibrated = fairness.threshold_for(obligations.max_worst_group_fmr)
        unreachable = calibrated is None
        if calibrated is not None:
            threshold = max(threshold, calibrated)
            obligations = replace(obligations, min_threshold=max(obligations.min_threshold or 0.0, calibrated))
    identification = operation in IDENTIFICATION and target.collection is not None
    if not identification and not unreachable:
        return replace(first, obligations=obligations)
    worst = fairness.worst_group(threshold)
    expected = target.size * worst.fmr if identification else 0.0
    facts = FairnessFacts(fairness.audit_id, threshold, target.size, worst.group, worst.fmr, expected, calibrated)
    second = _evaluate(
        policies,
        subject,
        operation,
        target,
        when,
        expected_micro=round(expected * 1_000_000),
        unreachable=unreachable,
        facts=facts,
    )
    if not second.allowed:
        return second
    return replace(first, obligations=obligations, fairness=facts)


def _evaluate(
    policies: CompiledPolicies,
    subject: Subject,
    operation: str,
    target: Target,
    when: Circumstances,
    expected_micro: int,
    unreachable: bool,
    facts: FairnessFacts | None,
) -> Decision:
    entities = policies.entities + _subject_entities(subject) + _target_entities(target)
    use_case = subject.use_case
    request = {
        "principal": _principal_uid(subject.key),
        "action": {"type": "Facegate::Action", "id": operation},
        "resource": _resource_uid(target),
        "context": {
            "now": int(when.now),
            "purpose": use_case.purpose if use_case else "",
            "has_case_reference": bool(when.case_reference),
            "case_reference": when.case_reference or "",
            "has_consent_reference": bool(when.consent_reference),
            "threshold": int(_finite_or(when.threshold, DEFAULT_THRESHOLD)),
            "collection_size": target.size,
            "expected_false_candidates_micro": expected_micro,
            "worst_group_target_unreachable": unreachable,
        },
    }
    # The schema supplies the action groups (identification, …) and checks the entities against their types.
    result = cedarpy.is_authorized(request, policies.policy_set, entities, schema())
    errors = tuple(_name_policies(policies, str(e)) for e in result.diagnostics.errors)
    determining = tuple(policies.ids.get(p, p) for p in result.diagnostics.reasons)
    if errors:
        return Decision(
            False,
            determining,
            "a policy could not be evaluated, which counts as a deny: " + "; ".join(errors),
            errors=errors,
            policy_set_hash=policies.digest,
        )
    if result.decision != cedarpy.Decision.Allow:
        if not determining:
            return Decision(False, (), "no policy permits this request", policy_set_hash=policies.digest)
        reason = "; ".join(f"{p}: {_explain(policies.explanations.get(p, 'forbidden'), facts)}" for p in determining)
        return Decision(False, determining, reason, policy_set_hash=policies.digest, fairness=facts)
    obligations = Obligations()
    for policy in determining:
        if policy in policies.obligations:
            obligations = obligations.merge(policies.obligations[policy])
    return Decision(True, determining, "allowed", obligations, policy_set_hash=policies.digest)


def _finite_or(value: float | None, default: float) -> float:
    return value if value is not None and math.isfinite(value) else default


def _explain(text: str, facts: FairnessFacts | None) -> str:
    """Fill an explanation's numbers (only rules that read the fairness audit have any)."""
    if facts is None:
        return text
    try:
        return text.format_map(
            {
                "collection_size": facts.collection_size,
                "threshold": facts.threshold,
                "expected": facts.expected,
                "worst_group": facts.worst_group,
                "worst_fmr": facts.worst_fmr,
                "audit": facts.audit,
            }
        )
    except (KeyError, ValueError):
        return text


def _subject_entities(subject: Subject) -> list[dict]:
    key, org, use_case = subject.key, subject.organisation, subject.use_case
    org_name = org.name if org else key.owner
    key_parents = [{"type": "Facegate::Organisation", "id": org_name}]
    entities = [
        {
            "uid": {"type": "Facegate::Organisation", "id": org_name},
            "attrs": {
                "category": org.category if org else "unregistered",
                "jurisdiction": org.jurisdiction if org else "",
                "status": org.status if org else "active",
            },
            "parents": [{"type": "Facegate::Group", "id": g} for g in (org.groups if org else ())],
        }
    ]
    entities += [
        {"uid": {"type": "Facegate::Group", "id": g}, "attrs": {}, "parents": []} for g in (org.groups if org else ())
    ]
    if use_case is not None:
        key_parents.append({"type": "Facegate::UseCase", "id": use_case.use_case_id})
        entities.append(
            {
                "uid": {"type": "Facegate::UseCase", "id": use_case.use_case_id},
                "attrs": {"purpose": use_case.purpose, "status": use_case.status},
                "parents": [{"type": "Facegate::Organisation", "id": org_name}],
            }
        )
    entities.append(
        {
            "uid": _principal_uid(key),
            "attrs": {
                "status": "active" if key.revoked_at is None else "revoked",
                "organisation": org_name,
                "organisation_status": org.status if org else "active",
                "category": org.category if org else "unregistered",
                "jurisdiction": org.jurisdiction if org else "",
                "registered": use_case is not None,
                "use_case_status": use_case.status if use_case else "active",
                "purpose": use_case.purpose if use_case else "",
                "valid_from": int(use_case.valid_from) if use_case else 0,
                "valid_until": int(use_case.valid_until) if use_case and use_case.valid_until else FAR_FUTURE,
                "any_collection": use_case is None or use_case.collections is None,
                "collections": list(use_case.collections or ()) if use_case else [],
                "legal_basis": (use_case.legal_basis or "") if use_case else "",
                "authorisation_reference": (use_case.authorisation_reference or "") if use_case else "",
            },
            "parents": key_parents,
        }
    )
    return entities


def _principal_uid(key: AccessKey) -> dict:
    kind = "Facegate::Operator" if key.role == OPERATOR_ROLE else "Facegate::Key"
    return {"type": kind, "id": key.access_key_id}


def _resource_uid(target: Target) -> dict:
    if target.collection is None:
        return {"type": "Facegate::Service", "id": "rekognition"}
    return {"type": "Facegate::Collection", "id": target.collection}


def _target_entities(target: Target) -> list[dict]:
    if target.collection is None:
        return [{"uid": _resource_uid(target), "attrs": {}, "parents": []}]
    attrs = {"name": target.collection, "size": target.size, "jurisdiction": target.jurisdiction}
    return [{"uid": _resource_uid(target), "attrs": attrs, "parents": []}]


def _name_policies(policies: CompiledPolicies, message: str) -> str:
    for cedar_id, our_id in policies.ids.items():
        message = message.replace(f"`{cedar_id}`", f"`{our_id}`")
    return message
