"""The transparency report: what facegate was used for, by whom, and what the policies refused, over a period.

Built only from the audit log (plus the organisations' categories), so what it counts is what the
tamper-evident record shows. Writes ``transparency.json`` and ``transparency.html`` (charts inline).
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from facegate.audit import AuditLog
from facegate.store import Organisation

IDENTIFICATION = {"SearchFaces", "SearchFacesByImage", "SearchUsers", "SearchUsersByImage", "CompareFaces"}


def build(audit: AuditLog, organisations: list[Organisation], since: float, until: float) -> dict[str, Any]:
    categories = {o.name: o.category for o in organisations}
    requests = Counter()
    by_category: dict[str, Counter] = defaultdict(Counter)
    by_purpose: dict[str, Counter] = defaultdict(Counter)
    by_operation: dict[str, Counter] = defaultdict(Counter)
    denials_by_policy = Counter()
    thresholds_applied = Counter()
    matches_by_purpose = Counter()
    human_review = 0
    events = []
    for entry in audit.entries(since=since, until=until):
        event = entry.get("event")
        if event != "request":
            if event in (
                "revocation",
                "reinstatement",
                "policy_change",
                "key_issued",
                "use_case_registered",
                "organisation_created",
                "deletion",
                "retention_set",
                "groups_changed",
            ):
                events.append(
                    {
                        k: entry.get(k)
                        for k in (
                            "seq",
                            "time",
                            "event",
                            "organisation",
                            "template",
                            "change",
                            "use_case",
                            "access_key",
                            "reason",
                            "actor",
                        )
                        if entry.get(k) is not None
                    }
                )
            continue
        decision = entry.get("decision", "error")
        requests[decision] += 1
        category = categories.get(
            entry.get("organisation"), "unregistered" if entry.get("organisation") else "unauthenticated"
        )
        by_category[category][decision] += 1
        by_purpose[entry.get("purpose") or "no registered purpose"][decision] += 1
        by_operation[entry.get("operation", "unknown")][decision] += 1
        if decision == "deny":
            for policy in entry.get("policies") or ["(none)"]:
                denials_by_policy[policy] += 1
        if decision == "allow" and entry.get("threshold_applied") is not None:
            thresholds_applied[f"{entry['threshold_applied']:g}"] += 1
        if decision == "allow" and entry.get("operation") in IDENTIFICATION and not entry.get("matches_withheld"):
            matches_by_purpose[entry.get("purpose") or "no registered purpose"] += len(entry.get("matches") or [])
        human_review += bool(entry.get("human_review_required")) and decision == "allow"
    return {
        "period": {"from": _iso(since), "to": _iso(until)},
        "requests": dict(requests),
        "by_category": {k: dict(v) for k, v in sorted(by_category.items())},
        "by_purpose": {k: dict(v) for k, v in sorted(by_purpose.items())},
        "by_operation": {k: dict(v) for k, v in sorted(by_operation.items())},
        "denials_by_policy": dict(denials_by_policy.most_common()),
        "matches_returned_by_purpose": dict(matches_by_purpose),
        "thresholds_applied": dict(sorted(thresholds_applied.items(), key=lambda kv: float(kv[0]))),
        "human_review_required": human_review,
        "governance_events": events,
        "audit_log": {"size": audit.size(), "checkpoint": audit.checkpoint()},
    }


def write(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "transparency.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    html_path = out_dir / "transparency.html"
    html_path.write_text(html_report(report))
    return json_path, html_path


def html_report(report: dict[str, Any]) -> str:
    """The report as one HTML page with its charts inline (the console shows it; ``write`` saves it)."""
    return _html(report)


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat()


def _chart(title: str, table: dict[str, dict[str, int]]) -> str:
    """A horizontal stacked bar chart (allow / deny / error) as an inline PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(table)
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(labels), 2) + 1.2))
    left = [0] * len(labels)
    for decision, colour in (("allow", "#3a7d44"), ("deny", "#b23a48"), ("error", "#888888")):
        values = [table[label].get(decision, 0) for label in labels]
        ax.barh(labels, values, left=left, color=colour, label=decision)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_title(title)
    ax.set_xlabel("requests")
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return (
        f'<img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'
    )


def _rows(counts: dict[str, Any]) -> str:
    return "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in counts.items())


def _html(report: dict[str, Any]) -> str:
    period = report["period"]
    sections = [
        f"<h1>facegate transparency report</h1><p>{html.escape(period['from'])} to {html.escape(period['to'])}. "
        f"Built from the audit log (size {report['audit_log']['size']}, signed checkpoint root "
        f"<code>{report['audit_log']['checkpoint']['root']}</code>).</p>",
        "<h2>Requests and decisions</h2><table>" + _rows(report["requests"]) + "</table>",
        f"<p>Allowed requests that required human review of matches: {report['human_review_required']}</p>",
    ]
    for key, title in (
        ("by_category", "Requests by organisation category"),
        ("by_purpose", "Requests by purpose"),
        ("by_operation", "Requests by operation"),
    ):
        if report[key]:
            sections.append(f"<h2>{title}</h2>" + _chart(title, report[key]))
    sections += [
        "<h2>Denials by policy</h2><table>" + _rows(report["denials_by_policy"]) + "</table>",
        "<h2>Matches returned by purpose</h2><table>" + _rows(report["matches_returned_by_purpose"]) + "</table>",
        "<h2>Thresholds applied</h2><table>" + _rows(report["thresholds_applied"]) + "</table>",
        "<h2>Revocations, policy changes and other governance events</h2><table>"
        + "".join(
            f"<tr><td>{_iso(e['time']) if 'time' in e else ''}</td><td>{html.escape(e['event'])}</td>"
            f"<td>{html.escape(json.dumps({k: v for k, v in e.items() if k not in ('time', 'event')}))}</td></tr>"
            for e in report["governance_events"]
        )
        + "</table>",
    ]
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}td{padding:2px 12px;border-bottom:1px solid #ddd}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>facegate transparency report</title><style>{style}</style></head><body>{''.join(sections)}</body></html>\n"
