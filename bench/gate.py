"""What governance costs per request: the policy decision, the gate around it, and the durable audit record.

Runs in-process on a fresh data directory with every policy template active and a registered police use
case (the most policies that can apply), and compares the governed operation (``GovernedService.execute``:
gate → service → audit) with the bare service call — the peer being facegate without governance, i.e. what
Rekognition's wire API alone offers. The governed operation is timed for each kind of caller: an access key
(what every HTTP request runs, after SigV4) and the local operator (what every CLI command and Python API
call runs), for a read (one audit record) and a change (an intent before it and an outcome after: two).
The last row is a whole `facegate collections describe` process, for scale.

    python bench/gate.py [--n 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from facegate.compose import Settings, build
from facegate.governed import RequestContext
from facegate.keys import Principal
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
        facegate = build(Settings(home))
        service, governance, governed = facegate.service, facegate.governance, facegate.governed
        for name, template in TEMPLATES.items():
            if not template.always_on:
                governance.activate(name, [], reason="benchmark: every template active")
        governance.create_organisation("pd", "law_enforcement", "US-WA", ("amazon-2020-moratorium-exempt",))
        use_case = governance.create_use_case("pd", "missing_children")
        issued = governance.issue_key(use_case_id=use_case.use_case_id)
        principal = facegate.keys.secret_for(issued.access_key_id)[0]
        operator = Principal.operator("pd", actor="local-cli")
        params = {"CollectionId": "gallery"}
        governed.execute(operator, "CreateCollection", params)
        arn = service.call("pd", "DescribeCollection", params).arn
        tags = {"ResourceArn": arn, "Tags": {"bench": "1"}}
        case = RequestContext(case_reference="C-1")

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
            "governed DescribeCollection, access key (HTTP)": timed(
                lambda: governed.execute(principal, "DescribeCollection", params, case), args.n // 4
            ),
            "governed DescribeCollection, operator (CLI, Python API)": timed(
                lambda: governed.execute(operator, "DescribeCollection", params), args.n // 4
            ),
            "service only: TagResource (peer)": timed(lambda: service.call("pd", "TagResource", tags), args.n // 4),
            "governed TagResource, access key (intent + outcome)": timed(
                lambda: governed.execute(principal, "TagResource", tags, case), args.n // 4
            ),
        }
        env = {**os.environ, "FACEGATE_HOME": str(home)}
        command = [str(Path(sys.executable).with_name("facegate")), "--org", "pd", "collections", "describe", "gallery"]
        rows["CLI process: facegate collections describe (whole run)"] = timed(
            lambda: subprocess.run(command, env=env, check=True, capture_output=True), max(3, args.n // 200)
        )
        report = {name: summary(samples) for name, samples in rows.items()}
        facegate.close()

    if args.json:
        print(json.dumps(report, indent=2))
        return
    print("| step | p50 µs | p99 µs | mean µs |")
    print("|---|---|---|---|")
    for name, row in report.items():
        print(f"| {name} | {row['p50_us']:.0f} | {row['p99_us']:.0f} | {row['mean_us']:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
