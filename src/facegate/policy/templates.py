"""Policy templates: each a Cedar file plus the data it needs (dates, purposes, obligations) and the words a
denied client reads. Operators activate a subset with parameters; the data lives in regime entities, so
extending a moratorium is a data change, not a code change."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

# Controlled vocabularies (GOVERNANCE.md): use cases name one purpose, organisations one category.
PURPOSES = frozenset(
    {
        "missing_persons",
        "missing_children",
        "human_trafficking",
        "victim_search",
        "imminent_threat",
        "serious_crime_suspect",
        "criminal_investigation",
        "access_control",
        "identity_verification",
        "photo_organisation",
        "research",
    }
)
CATEGORIES = frozenset(
    {"law_enforcement", "ngo", "commercial", "research", "government", "city_department", "unregistered"}
)
FOREVER = "until further notice"


@dataclass(frozen=True)
class Obligation:
    """What an applying obligation policy imposes on an allowed request."""

    min_threshold: float | None = None
    max_results: int | None = None
    human_review: bool = False
    reviewers: int = 0
    # With a fairness audit active: raise the threshold until the worst group's FMR is at most this.
    max_worst_group_fmr: float | None = None


@dataclass(frozen=True)
class Template:
    name: str
    title: str
    defaults: dict[str, Any] = field(default_factory=dict)
    # Regime entities (Cedar JSON) built from the parameters.
    entities: Callable[[dict], list[dict]] = lambda params: []
    # Policy id → obligation, for permit policies that impose something when they apply.
    obligations: Callable[[dict], dict[str, Obligation]] = lambda params: {}
    # Policy id → the sentence a denied client reads.
    explain: Callable[[dict], dict[str, str]] = lambda params: {}
    always_on: bool = False

    def cedar(self) -> str:
        return resources.files("facegate.policy").joinpath("templates", f"{self.name}.cedar").read_text()


def epoch(value: str | float | int) -> int:
    """A date (YYYY-MM-DD, UTC midnight) or an ISO timestamp or epoch seconds, as epoch seconds."""
    if isinstance(value, int | float):
        return int(value)
    parsed = datetime.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return int(parsed.timestamp())


def _moratorium_entities(p: dict) -> list[dict]:
    open_ended = p.get("ends") in (None, FOREVER) or bool(p.get("open_ended"))
    return [
        {
            "uid": {"type": "Facegate::Moratorium", "id": "amazon-2020-police-moratorium"},
            "attrs": {
                "starts": epoch(p["starts"]),
                "ends": 2**53 if open_ended else epoch(p["ends"]),
                "open_ended": open_ended,
                "exempt_purposes": list(p["exempt_purposes"]),
            },
            "parents": [],
        }
    ]


def _moratorium_explain(p: dict) -> dict[str, str]:
    open_ended = p.get("ends") in (None, FOREVER) or bool(p.get("open_ended"))
    until = FOREVER if open_ended else f"until {p['ends']}"
    purposes = " and ".join(p["exempt_purposes"])
    return {
        "amazon-2020-police-moratorium": (
            f"the Amazon 2020 police moratorium suspends face comparison and search by law enforcement from "
            f"{p['starts']} {until}; only organisations on its exemption list may continue, and only for {purposes}"
        )
    }


def _public_safety_obligations(p: dict) -> dict[str, Obligation]:
    return {
        "aws-public-safety/threshold-and-review": Obligation(
            min_threshold=float(p["min_threshold"]),
            max_results=p.get("max_results") or None,
            human_review=True,
            reviewers=int(p.get("reviewers", 1)),  # 1: the matches are returned and a case opened; 2+: withheld
            max_worst_group_fmr=float(p["max_worst_group_fmr"]),
        )
    }


def _public_safety_entities(p: dict) -> list[dict]:
    limit = int(round(float(p["max_expected_false_candidates"]) * 1_000_000))
    return [
        {
            "uid": {"type": "Facegate::PublicSafety", "id": "aws-public-safety"},
            "attrs": {"max_expected_false_candidates_micro": limit},
            "parents": [],
        }
    ]


def _eu_entities(p: dict) -> list[dict]:
    return [
        {
            "uid": {"type": "Facegate::PermittedPurposes", "id": "eu-ai-act-5-1-h"},
            "attrs": {"purposes": list(p["permitted_purposes"])},
            "parents": [],
        }
    ]


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in [
        Template(
            "always",
            "Baseline, revocation and use-case terms (always active)",
            always_on=True,
            explain=lambda p: {
                "revocation": "the access key, its use case or its organisation has been revoked or suspended",
                "use-case-validity": "the registered use case is not valid at this time",
                "use-case-collections": "the registered use case does not cover this collection",
            },
        ),
        Template(
            "amazon-2020-police-moratorium",
            "Amazon 2020 police moratorium (exemptions for missing children and human trafficking)",
            defaults={
                "starts": "2020-06-10",
                "ends": "2021-06-10",
                "exempt_purposes": ["missing_children", "human_trafficking"],
            },
            entities=_moratorium_entities,
            explain=_moratorium_explain,
        ),
        Template(
            "aws-public-safety",
            "AWS public-safety guidance: threshold ≥ 99, human review, case reference",
            defaults={
                "min_threshold": 99,
                "max_results": 0,
                "max_worst_group_fmr": 1e-4,
                "max_expected_false_candidates": 1.0,
                "reviewers": 1,
            },
            obligations=_public_safety_obligations,
            entities=_public_safety_entities,
            explain=lambda p: {
                "aws-public-safety/case-reference": (
                    "AWS public-safety guidance requires a case reference for law-enforcement searches: "
                    "send it in the X-Facegate-Case header"
                ),
                "aws-public-safety/worst-group-fmr": (
                    f"no similarity threshold below 100 keeps the worst group's false-match rate at or below "
                    f"{p['max_worst_group_fmr']:g} in fairness audit {{audit}} (worst group {{worst_group}}: FMR "
                    "{worst_fmr:.2e} at similarity {threshold:g}): the model is not fit for this use"
                ),
                "aws-public-safety/gallery-size": (
                    "a search of this collection ({collection_size:,} faces) at similarity {threshold:g} should "
                    "return {expected:.2f} false candidates (worst group {worst_group}: FMR {worst_fmr:.2e} per "
                    f"comparison, fairness audit {{audit}}); the limit is {p['max_expected_false_candidates']:g}"
                ),
            },
        ),
        Template(
            "limited-access",
            "Microsoft-style Limited Access: registered use case required; never by or for US police",
            explain=lambda p: {
                "limited-access/registration-required": (
                    "Limited Access: identification and verification need a key issued for an approved use case"
                ),
                "limited-access/no-us-police": "Limited Access: never by or for a police department in the United States",
            },
        ),
        Template(
            "eu-ai-act-5-1-h",
            "EU AI Act Art. 5(1)(h) and 14(5): permitted purposes with authorisation; two-person review",
            defaults={
                "permitted_purposes": ["victim_search", "missing_persons", "imminent_threat", "serious_crime_suspect"],
                "reviewers": 2,
            },
            entities=_eu_entities,
            obligations=lambda p: {
                "eu-ai-act-14-5/two-person-review": Obligation(human_review=True, reviewers=int(p["reviewers"]))
            },
            explain=lambda p: {
                "eu-ai-act-5-1-h": (
                    "EU AI Act Art. 5(1)(h): law-enforcement identification only for "
                    f"{', '.join(p['permitted_purposes'])}, with a prior authorisation reference on the use case"
                )
            },
        ),
        Template(
            "illinois-bipa",
            "Illinois BIPA: enrolment of Illinois subjects needs a consent reference",
            defaults={"retention_years": 3},
            explain=lambda p: {
                "illinois-bipa/consent": (
                    "Illinois BIPA: enrolling an Illinois subject's face needs a written release; send its "
                    "reference in the X-Facegate-Consent header"
                )
            },
        ),
        Template(
            "san-francisco-2019",
            "San Francisco 2019 ordinance: city departments may not use face recognition",
            explain=lambda p: {
                "san-francisco-2019": "the San Francisco 2019 ordinance forbids face recognition by city departments"
            },
        ),
        Template(
            "kill-switch",
            "Kill switch: all identification and verification stops",
            explain=lambda p: {"kill-switch": "the operator has stopped all identification and verification"},
        ),
    ]
}


def parse_params(template: Template, pairs: list[str], current: dict | None = None) -> dict:
    """``KEY=VALUE`` pairs over the current (or default) parameters; lists are comma-separated."""
    params = dict(current if current is not None else template.defaults)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in template.defaults:
            known = ", ".join(sorted(template.defaults)) or "none"
            raise ValueError(f"{pair!r} is not KEY=VALUE with a parameter of {template.name} (parameters: {known})")
        default = template.defaults[key]
        if isinstance(default, list):
            params[key] = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(default, bool):
            params[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, int) and not isinstance(default, bool):
            params[key] = int(value)
        elif isinstance(default, float):
            params[key] = float(value)
        else:
            params[key] = None if value.lower() in ("", "none", "null") else value
    return params
