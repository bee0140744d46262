"""The policy decision, template by template, as a pure function."""

from __future__ import annotations

import cedarpy
import pytest

from facegate.fairness.calibrated import AuditCurves
from facegate.policy.gate import Circumstances, CompiledPolicies, PolicyInvalid, Subject, Target, decide
from facegate.policy.templates import TEMPLATES, epoch
from facegate.store import AccessKey, Organisation, PolicyState, UseCase


def policies(**active: dict) -> CompiledPolicies:
    return CompiledPolicies.compile(
        {name: PolicyState(name, True, params, 0, "test") for name, params in active.items()}
    )


def subject(
    category="commercial",
    jurisdiction="US-NY",
    purpose=None,
    groups=(),
    *,
    key_revoked=False,
    org_status="active",
    collections=None,
    authorisation=None,
    valid_until=None,
) -> Subject:
    organisation = Organisation("org", category, jurisdiction, org_status, tuple(groups), 0)
    use_case = None
    if purpose is not None:
        use_case = UseCase(
            "uc-1", "org", purpose, collections, 0, valid_until, None, authorisation, "approver", "active", 0
        )
    key = AccessKey(
        "AKIATEST", "org", "client", b"", 0, 1.0 if key_revoked else None, use_case.use_case_id if use_case else None
    )
    return Subject(key, organisation, use_case)


def at(day: str, **kw) -> Circumstances:
    return Circumstances(epoch(day), **kw)


SEARCH = "SearchFacesByImage"


def test_baseline_allows_and_revocation_denies():
    p = policies()
    assert decide(p, subject(), SEARCH, Target("c", 10), at("2024-01-01")).allowed
    for revoked in (subject(key_revoked=True), subject(org_status="revoked"), subject(org_status="suspended")):
        decision = decide(p, revoked, SEARCH, Target("c", 10), at("2024-01-01"))
        assert not decision.allowed and decision.policies == ("revocation",)


def test_use_case_terms():
    p = policies()
    limited = subject(purpose="photo_organisation", collections=("family",), valid_until=epoch("2024-06-01"))
    assert decide(p, limited, SEARCH, Target("family", 1), at("2024-01-01")).allowed
    assert decide(p, limited, SEARCH, Target("other", 1), at("2024-01-01")).policies == ("use-case-collections",)
    assert decide(p, limited, SEARCH, Target("family", 1), at("2024-07-01")).policies == ("use-case-validity",)


def test_moratorium_window_exemptions_and_extension():
    p = policies(**{"amazon-2020-police-moratorium": {}})
    police = subject("law_enforcement", "US-WA", "criminal_investigation")
    assert decide(p, police, SEARCH, Target("c"), at("2020-06-09")).allowed
    denied = decide(p, police, SEARCH, Target("c"), at("2020-06-10"))
    assert not denied.allowed and "until 2021-06-10" in denied.reason
    assert decide(p, police, SEARCH, Target("c"), at("2021-06-10")).allowed  # lapsed
    assert decide(p, police, "CompareFaces", Target(), at("2020-07-01")).allowed is False
    assert decide(p, police, "IndexFaces", Target("c"), at("2020-07-01")).allowed  # not a search

    exempt_police = subject("law_enforcement", "US-WA", "missing_children", groups=["amazon-2020-moratorium-exempt"])
    assert decide(p, exempt_police, SEARCH, Target("c"), at("2020-07-01")).allowed
    exempt_ngo_other = subject("ngo", "US-CA", "research", groups=["amazon-2020-moratorium-exempt"])
    assert not decide(p, exempt_ngo_other, SEARCH, Target("c"), at("2020-07-01")).allowed
    assert decide(p, subject("ngo", "US-CA", "research"), SEARCH, Target("c"), at("2020-07-01")).allowed

    forever = policies(**{"amazon-2020-police-moratorium": {"ends": "until further notice"}})
    late = decide(forever, police, SEARCH, Target("c"), at("2030-01-01"))
    assert not late.allowed and "until further notice" in late.reason


def test_public_safety_obligations():
    p = policies(**{"aws-public-safety": {}})
    police = subject("law_enforcement", "US-WA", "criminal_investigation")
    assert decide(p, police, SEARCH, Target("c"), at("2024-01-01")).policies == ("aws-public-safety/case-reference",)
    allowed = decide(p, police, SEARCH, Target("c"), at("2024-01-01", case_reference="C-1"))
    assert allowed.allowed and allowed.obligations.min_threshold == 99 and allowed.obligations.human_review
    assert decide(p, subject(), SEARCH, Target("c"), at("2024-01-01")).obligations.min_threshold is None


def test_limited_access_eu_ai_act_bipa_sf_kill_switch():
    p = policies(**{"limited-access": {}})
    assert not decide(p, subject(), SEARCH, Target("c"), at("2024-01-01")).allowed  # unregistered
    assert decide(p, subject(purpose="identity_verification"), SEARCH, Target("c"), at("2024-01-01")).allowed
    us_police = subject("law_enforcement", "US-TX", "missing_persons")
    assert decide(p, us_police, SEARCH, Target("c"), at("2024-01-01")).policies == ("limited-access/no-us-police",)

    p = policies(**{"eu-ai-act-5-1-h": {}})
    eu_police = subject("law_enforcement", "EU-DE", "criminal_investigation", authorisation="AG-2025-1")
    assert not decide(p, eu_police, SEARCH, Target("c"), at("2025-03-01")).allowed  # not a permitted purpose
    unauthorised = subject("law_enforcement", "EU-DE", "victim_search")
    assert not decide(p, unauthorised, SEARCH, Target("c"), at("2025-03-01")).allowed
    authorised = decide(
        p,
        subject("law_enforcement", "EU-DE", "victim_search", authorisation="AG-1"),
        SEARCH,
        Target("c"),
        at("2025-03-01"),
    )
    assert authorised.allowed and authorised.obligations.reviewers == 2

    p = policies(**{"illinois-bipa": {}})
    illinois = Target("customers", 5, "US-IL")
    assert not decide(p, subject(), "IndexFaces", illinois, at("2024-01-01")).allowed
    assert decide(p, subject(), "IndexFaces", illinois, at("2024-01-01", consent_reference="release-77")).allowed
    assert decide(p, subject(), "IndexFaces", Target("customers", 5, "US-NY"), at("2024-01-01")).allowed

    p = policies(**{"san-francisco-2019": {}})
    assert not decide(p, subject("city_department", "US-CA-SF"), "DetectFaces", Target(), at("2024-01-01")).allowed
    assert decide(p, subject("city_department", "US-CA-LA"), "DetectFaces", Target(), at("2024-01-01")).allowed

    p = policies(**{"kill-switch": {}})
    assert not decide(p, subject(purpose="research"), SEARCH, Target("c"), at("2024-01-01")).allowed
    assert decide(p, subject(purpose="research"), "DetectFaces", Target(), at("2024-01-01")).allowed


def test_every_template_validates_alone_and_together():
    for name, template in TEMPLATES.items():
        if not template.always_on:
            policies(**{name: {}})
    policies(**{name: {} for name, t in TEMPLATES.items() if not t.always_on})


def test_a_policy_that_fails_validation_cannot_be_compiled(monkeypatch):
    broken = TEMPLATES["kill-switch"]
    monkeypatch.setattr(
        type(broken), "cedar", lambda self: "forbid (principal, action, resource) when { principal.no_such_attribute };"
    )
    with pytest.raises(PolicyInvalid, match="does not validate"):
        policies(**{"kill-switch": {}})


def test_an_evaluation_error_is_a_deny():
    """Cedar skips a policy that errors — a broken forbid would fail open; facegate denies instead."""
    good = policies()
    text = "permit (principal, action, resource);\nforbid (principal, action, resource) when { context.missing == 1 };"
    broken = CompiledPolicies(
        cedarpy.PolicySet.from_str(text), {"policy0": "baseline", "policy1": "broken"}, [], {}, {}, (), "x"
    )
    assert decide(good, subject(), SEARCH, Target("c"), at("2024-01-01")).allowed
    decision = decide(broken, subject(), SEARCH, Target("c"), at("2024-01-01"))
    assert not decision.allowed and decision.errors and "broken" in decision.reason


def synthetic_report(worse_factor: float = 10.0, floor_fmr: float = 1e-12) -> dict:
    """An audit report of two groups whose FMR falls tenfold every 5 similarity points (A: 1e-6 at 80); B is
    ``worse_factor`` times worse."""
    grid = [i * 0.5 for i in range(201)]
    fmr_a = [max(min(1.0, 10 ** (-(s - 50) / 5)), floor_fmr) if s < 100 else 0.0 for s in grid]
    fmr_b = [min(1.0, f * worse_factor) for f in fmr_a]
    report = {
        "model": {"version": "dlib-resnet-v1"},
        "dataset": {"spec": "synthetic"},
        "dimensions": [
            {
                "name": "group",
                "groups": {
                    "A": {"impostor_pairs": 50_000},
                    "B": {"impostor_pairs": 50_000},
                    "tiny": {"impostor_pairs": 10},
                },
                "curves": {"similarity": grid, "fmr": {"A": fmr_a, "B": fmr_b, "tiny": [1.0] * 201}},
            }
        ],
    }
    return report


def synthetic_audit(worse_factor: float = 10.0, floor_fmr: float = 1e-12) -> AuditCurves:
    return AuditCurves.from_report(synthetic_report(worse_factor, floor_fmr))


def test_audit_curves_worst_group_calibrated_threshold_and_expected_candidates():
    curves = synthetic_audit()
    assert "group=tiny" not in curves.groups  # too few pairs to decide anything
    worst = curves.worst_group(80.0)
    assert worst.group == "group=B" and worst.fmr == pytest.approx(1e-5)
    # Between grid points the FMR of the point below is used: never understated.
    assert curves.worst_group(80.2).fmr == curves.worst_group(80.0).fmr
    assert curves.threshold_for(1e-4) == 75.0 and curves.threshold_for(1e-7) == 90.0
    assert curves.expected_false_candidates(1_000, 90.0) == pytest.approx(1_000 * 1e-7)
    assert synthetic_audit(floor_fmr=1e-3).threshold_for(1e-4) is None  # nothing below 100 reaches it


def public_safety(**params):
    return policies(**{"aws-public-safety": {"max_expected_false_candidates": 1.0, **params}})


def test_public_safety_uses_the_audit_threshold_and_gallery_size():
    police = subject("law_enforcement", "US-WA", "criminal_investigation")
    curves = synthetic_audit()
    when = at("2024-01-01", case_reference="C-1")
    p = public_safety(min_threshold=80, max_worst_group_fmr=1e-4)
    small = decide(p, police, SEARCH, Target("mugshots", 50_000), when, curves)
    assert small.allowed and small.obligations.min_threshold == 80.0  # calibrated 75 is below the static floor
    assert small.fairness.expected == pytest.approx(50_000 * 1e-5)
    large = decide(p, police, SEARCH, Target("mugshots", 500_000), when, curves)
    assert not large.allowed and large.policies == ("aws-public-safety/gallery-size",)
    assert "500,000 faces" in large.reason and "5.00 false candidates" in large.reason and "group=B" in large.reason
    # A tighter target: the audit raises the threshold above the static floor, and then the large gallery passes.
    p = public_safety(min_threshold=80, max_worst_group_fmr=1e-7)
    raised = decide(p, police, SEARCH, Target("mugshots", 500_000), when, curves)
    assert raised.allowed and raised.obligations.min_threshold == 90.0 and raised.fairness.threshold == 90.0
    # A commercial search is not limited by the public-safety rule, but still learns what to expect.
    commercial = decide(
        p, subject(purpose="identity_verification"), SEARCH, Target("c", 500_000), at("2024-01-01"), curves
    )
    assert commercial.allowed and commercial.fairness.expected == pytest.approx(500_000 * 1e-5)


def test_public_safety_refuses_when_no_threshold_meets_the_worst_group_target():
    police = subject("law_enforcement", "US-WA", "criminal_investigation")
    unfit = synthetic_audit(floor_fmr=1e-3)
    decision = decide(
        public_safety(max_worst_group_fmr=1e-4),
        police,
        "CompareFaces",
        Target(),
        at("2024-01-01", case_reference="C-1"),
        unfit,
    )
    assert not decision.allowed and decision.policies == ("aws-public-safety/worst-group-fmr",)
    assert "not fit for this use" in decision.reason
