"""What governance costs per request: the policy decision, the gate around it, and the durable audit record.

Runs in-process on a fresh data directory with every policy template active and a registered police use
case (the most policies that can apply), and compares a governed DescribeCollection (gate → service →
audit) with the bare service call — the peer being facegate without governance, i.e. what Rekognition's
wire API alone offers.

    python bench/gate.py [--n 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from facegate.api import build_service
from facegate.audit import AuditLog
from facegate.governance import Governance
from facegate.keys import KeyRing
from facegate.policy.gate import Circumstances, Target, decide
from facegate.policy.templates import TEMPLATES


def timed(fn, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - began) * 1e6)
    return samples


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "p50_us": statistics.median(ordered),
        "p99_us": ordered[int(len(ordered) * 0.99) - 1],
        "mean_us": statistics.fmean(ordered),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        service = build_service(home)
        keys = KeyRing(service.store, home)
        governance = Governance(service.store, keys, AuditLog(home))
        for name, template in TEMPLATES.items():
            if not template.always_on:
                governance.activate(name, [], reason="benchmark: every template active")
        governance.create_organisation("pd", "law_enforcement", "US-WA", ("amazon-2020-moratorium-exempt",))
        use_case = governance.create_use_case("pd", "missing_children")
        issued = governance.issue_key(use_case_id=use_case.use_case_id)
        principal = keys.secret_for(issued.access_key_id)[0]
        service.call("pd", "CreateCollection", {"CollectionId": "gallery"})
        params = {"CollectionId": "gallery"}

        policies, generation = governance._current()
        subject = governance._subject(principal, generation)
        target = Target("gallery", 0)
        when = Circumstances(time.time(), case_reference="C-1")

        rows = {
            "policy decision (Cedar, all templates)": timed(
                lambda: decide(policies, subject, "SearchFacesByImage", target, when), args.n
            ),
            "gate (decision + store lookups)": timed(
                lambda: governance.gate(principal, "SearchFacesByImage", params, case_reference="C-1"), args.n
            ),
            "audit record (durable append)": timed(
                lambda: governance.audit.append({"event": "request", "operation": "benchmark"}), args.n // 4
            ),
            "service only: DescribeCollection (peer: no governance)": timed(
                lambda: service.call("pd", "DescribeCollection", params), args.n
            ),
        }

        def governed() -> None:
            outcome = governance.gate(principal, "DescribeCollection", params, case_reference="C-1")
            result = service.call("pd", "DescribeCollection", outcome.params)
            governance.record_request(
                outcome,
                principal,
                "DescribeCollection",
                decision="allow",
                **governance.summarise_result("DescribeCollection", result),
            )

        rows["governed: gate + DescribeCollection + audit"] = timed(governed, args.n // 4)
        report = {name: summary(samples) for name, samples in rows.items()}

    if args.json:
        print(json.dumps(report, indent=2))
        return
    print("| step | p50 µs | p99 µs | mean µs |")
    print("|---|---|---|---|")
    for name, row in report.items():
        print(f"| {name} | {row['p50_us']:.0f} | {row['p99_us']:.0f} | {row['mean_us']:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
