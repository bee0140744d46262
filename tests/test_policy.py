"""The policy decision, template by template, as a pure function."""

from __future__ import annotations

import cedarpy
import pytest

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
