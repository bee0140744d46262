"""Writing audit and ACLU results: report.json (every number), summary.md (the headline table) and report.html
(tables plus matplotlib figures inlined as base64 PNG, so the file stands alone)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402

HEADLINE_THRESHOLDS = ("similarity 80", "similarity 99")
HEAT_MAP_POINTS = ("similarity 80", "overall FMR 0.0001")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 80em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
.note { color: #555; font-size: 0.9em; max-width: 60em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
.pair { display: inline-block; margin: 0.4em; text-align: center; font-size: 0.8em; }
.pair img { width: 96px; height: 96px; object-fit: cover; }
"""


def pct(rate: float | None) -> str:
    """A rate as a percentage with three significant figures (0.45%, 0.00266%)."""
    return "n/a" if rate is None else f"{100 * rate:.3g}%"


def rate_text(entry: dict | None, *, counts: bool = True) -> str:
    """'6.4% [6.3%, 6.5%] (1,234/19,000)'; a zero count shows its rule-of-three bound instead of 0."""
    if not entry or entry.get("rate") is None:
        return "n/a"
    low, high = entry["ci95"]
    tail = f" ({entry['count']:,}/{entry['trials']:,})" if counts else ""
    if entry["count"] == 0:
        return f"0 (< {pct(entry['upper95_rule_of_three'])}){tail}"
    return f"{pct(entry['rate'])} [{pct(low)}, {pct(high)}]{tail}"


def ratio_text(disparity: dict | None) -> str:
    if not disparity or disparity["groups"] < 2:
        return "n/a (fewer than two groups)"
    if disparity["max_group"] is None:
        return "no errors observed in any group (each rate is below its 3/n bound)"
    if disparity["max_over_geomean"] is None:
        return (
            f"not meaningful: zero-count groups' 3/n bounds exceed the highest observed rate ({disparity['max_group']})"
        )
    bound = " (lower bounds: some groups had no errors)" if disparity["zero_count_groups"] else ""
    return (
        f"max/min {disparity['max_over_min']:.1f}× (highest {disparity['max_group']}, lowest "
        f"{disparity['min_group']}), max/geomean {disparity['max_over_geomean']:.2f}×{bound}"
    )


def write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")


# The audit


def write_audit_report(report: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(report, out_dir / "report.json")
    (out_dir / "summary.md").write_text(audit_summary(report), encoding="utf-8")
    (out_dir / "report.html").write_text(audit_html(report), encoding="utf-8")


def _point(points: list[dict], name: str) -> int | None:
    return next((k for k, p in enumerate(points) if p["name"] == name), None)


def _headline_points(report: dict) -> list[int]:
    points = report["operating_points"]
    wanted = [_point(points, name) for name in (*HEADLINE_THRESHOLDS, "overall FMR 0.0001")]
    return [k for k in wanted if k is not None]


def audit_summary(report: dict) -> str:
    """The headline tables in Markdown."""
    dataset, model, detection = report["dataset"], report["model"], report["detection"]
    lines = [
        f"# Fairness audit: {dataset['spec']}",
        "",
        f"facegate {report['facegate_version']}, model {model['version']} (weights sha256 "
        f"{model['weights_sha256'][:16]}…, detector {model['detector']}); dataset sha256 "
        f"{dataset['dataset_sha256'][:16]}…; generated {report['generated']}.",
        f"Labels: {dataset['label_source']}.",
        f"{detection['images']:,} images, {detection['detected']:,} with a face "
        f"(detection failures {rate_text(detection['failure'])}); {report['pairs']['impostor']:,} impostor pairs, "
        f"{report['pairs']['genuine']:,} genuine pairs.",
        f"Scores: {report.get('scores', {}).get('served', 'raw')}"
        + (
            f" (normalised; {report['scores']['cohort_overlap_faces']:,} audited faces are in its cohort)"
            if report.get("scores", {}).get("served", "raw") != "raw"
            else " (dlib distances)"
        )
        + ".",
        "",
        "## Operating points (one global threshold for every group)",
        "",
        "| threshold | similarity | distance ≤ | FMR (all impostor pairs) | FNMR |",
        "|---|---|---|---|---|",
    ]
    for p in report["operating_points"]:
        lines.append(
            f"| {p['name']} | {p['similarity']:.2f} | {p['distance']:.4f} | {rate_text(p['fmr'])} | "
            f"{rate_text(p['fnmr'])} |"
        )
    headline = _headline_points(report)
    for dimension in report["dimensions"]:
        names = [report["operating_points"][k]["name"] for k in headline]
        has_fnmr = any("fnmr" in g for g in dimension["operating_points"][0]["groups"].values())
        lines += [
            "",
            f"## By {dimension['name']}",
            "",
            "| group | images | detection failures | "
            + " | ".join(f"FMR @ {n} [95% CI] (false/pairs)" for n in names)
            + (" | FNMR @ similarity 80" if has_fnmr else "")
            + " |",
            "|---|---|---|" + "---|" * len(names) + ("---|" if has_fnmr else ""),
        ]
        eighty = _point(report["operating_points"], "similarity 80")
        for group, info in dimension["groups"].items():
            cells = [rate_text(dimension["operating_points"][k]["groups"][group]["fmr"]) for k in headline]
            row = f"| {group} | {info['images']:,} | {pct(info['detection_failure']['rate'])} | " + " | ".join(cells)
            if has_fnmr and eighty is not None:
                row += " | " + rate_text(dimension["operating_points"][eighty]["groups"][group].get("fnmr"))
            lines.append(row + " |")
        for k in headline:
            point = dimension["operating_points"][k]
            lines.append(f"\nFMR disparity @ {point['name']}: {ratio_text(point['fmr_disparity'])}.")
        near = {g: info["near_identical_pairs"] for g, info in dimension["groups"].items()}
        strictest = _point(report["operating_points"], HEADLINE_THRESHOLDS[-1])
        if any(near.values()) and strictest is not None:
            point = dimension["operating_points"][strictest]
            without = ", ".join(
                f"{g} {rate_text(point['groups'][g]['fmr_excluding_near_identical'], counts=False)}" for g in near
            )
            lines.append(
                f"\nNear-identical impostor pairs (distance ≤ 0.05, most likely one photograph listed twice): "
                f"{', '.join(f'{g} {n}' for g, n in near.items())}. FMR @ {point['name']} without them: {without}."
            )
        measured = dimension.get("identification") or {}
        if measured:
            lines += [
                "",
                f"1:N by {dimension['name']}, mate-less searches against random galleries (measured): false "
                "candidates per search / FPIR",
                "",
                "| gallery | threshold | " + " | ".join(dimension["groups"]) + " |",
                "|---|---|" + "---|" * len(dimension["groups"]),
            ]
            for size, rows in measured.items():
                for k in headline:
                    groups = rows[k]["groups"]
                    cells = [
                        f"{groups[g]['false_candidates_per_search']:.3g} / {pct(groups[g]['fpir']['rate'])}"
                        if g in groups
                        else "n/a"
                        for g in dimension["groups"]
                    ]
                    lines.append(f"| {int(size):,} | {rows[k]['name']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Rates are shares of pairs; a group with no false match shows its 95% rule-of-three bound (< 3/n). "
        "Intervals are Clopper–Pearson; report.json also holds a bootstrap over subjects, FPIR, quality per "
        "group and the cross-group cells.",
        "",
    ]
    return "\n".join(lines)


def audit_html(report: dict) -> str:
    dataset, model = report["dataset"], report["model"]
    parts = [
        f"<h1>Fairness audit: {_e(dataset['spec'])}</h1>",
        "<table>",
        _row("facegate version", report["facegate_version"]),
        _row("model", f"{model['version']} (detector {model['detector']})"),
        _row("weights sha256", model["weights_sha256"]),
        _row("dataset sha256", dataset["dataset_sha256"]),
        _row("labels", dataset["label_source"]),
        _row("images / with a face", f"{report['detection']['images']:,} / {report['detection']['detected']:,}"),
        _row("impostor / genuine pairs", f"{report['pairs']['impostor']:,} / {report['pairs']['genuine']:,}"),
        _row("generated", report["generated"]),
        "</table>",
        "<h2>Method</h2><ul class=note>",
        *(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in report["method"].items()),
        "</ul>",
        "<h2>Operating points</h2>",
        _table(
            ["threshold", "similarity", "distance ≤", "FMR", "FNMR"],
            [
                [p["name"], f"{p['similarity']:.2f}", f"{p['distance']:.4f}", rate_text(p["fmr"]), rate_text(p["fnmr"])]
                for p in report["operating_points"]
            ],
        ),
        _figure(_overall_curve(report), "Overall FMR (and FNMR where measured) against the similarity threshold"),
    ]
    points = report["operating_points"]
    for dimension in report["dimensions"]:
        parts.append(f"<h2>By {_e(dimension['name'])}</h2>")
        parts.append(
            _table(
                ["group", "images", "with a face", "detection failures", "brightness", "sharpness", "impostor pairs"],
                [
                    [
                        g,
                        f"{info['images']:,}",
                        f"{info['detected']:,}",
                        rate_text(info["detection_failure"]),
                        _quality_text(info["quality"]["brightness"]),
                        _quality_text(info["quality"]["sharpness"]),
                        f"{info['impostor_pairs']:,}",
                    ]
                    for g, info in dimension["groups"].items()
                ],
            )
        )
        for k, point in enumerate(dimension["operating_points"]):
            rows = []
            for group, entry in point["groups"].items():
                boot = entry["fmr"].get("bootstrap95")
                row = [
                    group,
                    rate_text(entry["fmr"]),
                    _interval_text(boot),
                    rate_text(entry["fmr_excluding_near_identical"], counts=False),
                    pct(entry["fpir"].get("25000")),
                ]
                if "fnmr" in entry:
                    row.append(rate_text(entry["fnmr"]))
                rows.append(row)
            header = [
                "group",
                "FMR [95% CI] (false/pairs)",
                "bootstrap 95% (subjects)",
                "FMR without near-identical pairs",
                "FPIR at N=25,000",
            ]
            if rows and len(rows[0]) > len(header):
                header.append("FNMR")
            parts.append(f"<h3>{_e(points[k]['name'])} (similarity {points[k]['similarity']:.2f})</h3>")
            parts.append(_table(header, rows))
            parts.append(f"<p class=note>FMR disparity: {_e(ratio_text(point['fmr_disparity']))}</p>")
        figures = [_figure(_bars(report, dimension), "FMR per group with 95% Clopper–Pearson intervals")]
        for name in HEAT_MAP_POINTS:
            k = _point(points, name)
            if k is not None:
                figures.append(
                    _figure(
                        _heat_map(dimension, k, points[k]),
                        f"log10 FMR of impostor pairs between groups at {name}",
                    )
                )
        figures.append(_figure(*_curves(dimension)))
        parts.append("<div>" + "".join(figures) + "</div>")
    return _page(f"Fairness audit: {dataset['spec']}", "\n".join(parts))


def _quality_text(stats: dict | None) -> str:
    return "n/a" if not stats else f"{stats['mean']:.1f} (p10 {stats['p10']:.1f}, p90 {stats['p90']:.1f})"


def _interval_text(interval: list | None) -> str:
    if not interval or interval[0] is None:
        return "n/a"
    return f"[{pct(interval[0])}, {pct(interval[1])}]"


def _bars(report: dict, dimension: dict) -> plt.Figure:
    points = report["operating_points"]
    chosen = [k for k in (_point(points, n) for n in HEADLINE_THRESHOLDS) if k is not None]
    groups = list(dimension["groups"])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(groups) + 2), 4.2))
    width = 0.8 / max(len(chosen), 1)
    for s, k in enumerate(chosen):
        x = np.arange(len(groups)) + (s - (len(chosen) - 1) / 2) * width
        entries = [dimension["operating_points"][k]["groups"][g]["fmr"] for g in groups]
        values = np.array([e["rate"] if e["count"] else np.nan for e in entries], dtype=float)
        low = np.array([e["ci95"][0] if e["ci95"] else np.nan for e in entries])
        high = np.array([e["ci95"][1] if e["ci95"] else np.nan for e in entries])
        bars = ax.bar(x, np.nan_to_num(values), width, label=points[k]["name"])
        ax.errorbar(x, values, yerr=[values - low, high - values], fmt="none", ecolor="black", capsize=3)
        bounds = [e.get("upper95_rule_of_three") for e in entries]
        zero_x = [xi for xi, b in zip(x, bounds, strict=True) if b]
        if zero_x:
            ax.scatter(
                zero_x,
                [b for b in bounds if b],
                marker="v",
                facecolors="none",
                edgecolors=bars.patches[0].get_facecolor(),
                label=f"{points[k]['name']}: 0 observed, < 3/n",
            )
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(groups)), groups, rotation=30, ha="right")
    ax.set_ylabel("FMR (same-group impostor pairs)")
    ax.set_title(f"FMR by {dimension['name']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _heat_map(dimension: dict, k: int, point: dict) -> plt.Figure:
    groups = dimension["cross_groups"]
    cross = dimension["operating_points"][k]["cross"]
    fmr = np.array([[np.nan if v is None else v for v in row] for row in cross["fmr"]], dtype=float)
    with np.errstate(divide="ignore"):
        logs = np.where(fmr > 0, np.log10(fmr), np.nan)
    size = max(4.5, 0.55 * len(groups) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    finite = logs[np.isfinite(logs)]
    norm = Normalize(vmin=finite.min(), vmax=finite.max()) if finite.size else None
    image = ax.imshow(np.ma.masked_invalid(logs), cmap="viridis", norm=norm)
    ax.set_facecolor("#dddddd")
    for a in range(len(groups)):
        for b in range(len(groups)):
            text = "0" if cross["false_matches"][a][b] == 0 else f"{logs[a, b]:.1f}"
            ax.text(b, a, text, ha="center", va="center", fontsize=7, color="white" if text != "0" else "black")
    ax.set_xticks(range(len(groups)), groups, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(groups)), groups, fontsize=8)
    ax.set_xlabel("gallery group")
    ax.set_ylabel("probe group")
    title = (
        point["name"] if point["kind"] == "similarity" else f"{point['name']} (similarity {point['similarity']:.1f})"
    )
    ax.set_title(f"log10 FMR at {title}", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, label="log10 FMR")
    fig.tight_layout()
    return fig


def _curves(dimension: dict) -> tuple[plt.Figure, str]:
    curves = dimension["curves"]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    if curves.get("fnmr"):
        for group in curves["fmr"]:
            fmr = np.array(curves["fmr"][group], dtype=float)
            fnmr = np.array(curves["fnmr"][group], dtype=float)
            ok = (fmr > 0) & (fnmr > 0)
            ax.plot(fmr[ok], fnmr[ok], label=group)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("FMR")
        ax.set_ylabel("FNMR")
        caption = f"DET curves by {dimension['name']} (same-group pairs)"
    else:
        for group, values in curves["fmr"].items():
            fmr = np.array(values, dtype=float)
            ok = fmr > 0
            ax.plot(np.array(curves["similarity"])[ok], fmr[ok], label=group)
        ax.set_yscale("log")
        ax.set_xlabel("similarity threshold")
        ax.set_ylabel("FMR")
        for threshold in (80, 90, 95, 99):
            ax.axvline(threshold, color="#999", lw=0.6, ls="--")
        caption = (
            f"FMR against the threshold by {dimension['name']}: the dataset has no identities, so there are no "
            "genuine pairs and no FNMR axis for a DET curve"
        )
    ax.set_title(dimension["name"], fontsize=10)
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig, caption


def gate_view_html(report: dict) -> str:
    """What the gate reads of an audit report, as a page: each dimension's FMR by group at the headline thresholds,
    and its FMR curves (for a report that lacks the full audit's other sections)."""
    parts = [f"<h1>Fairness audit: {_e(report.get('dataset', {}).get('spec', 'report'))}</h1>"]
    thresholds = (80, 90, 95, 99)
    for dimension in report.get("dimensions", []):
        curves = dimension["curves"]
        grid = list(curves["similarity"])
        rows = []
        for group, fmr in curves["fmr"].items():
            pairs = dimension.get("groups", {}).get(group, {}).get("impostor_pairs")
            at = [fmr[max(i for i, s in enumerate(grid) if s <= t)] for t in thresholds]
            rows.append([group, f"{pairs:,}" if pairs is not None else "", *(f"{v:.2e}" for v in at)])
        parts.append(f"<h2>FMR by {_e(dimension['name'])}</h2>")
        parts.append(_table(["group", "impostor pairs", *(f"FMR at {t}" for t in thresholds)], rows))
        parts.append(_figure(*_curves(dimension)))
    return _page("Fairness audit", "\n".join(parts))


def _overall_curve(report: dict) -> plt.Figure:
    curves = report["curves"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    similarity = np.array(curves["similarity"])
    fmr = np.array(curves["fmr"], dtype=float)
    ax.plot(similarity[fmr > 0], fmr[fmr > 0], label="FMR")
    if curves["fnmr"]:
        fnmr = np.array(curves["fnmr"], dtype=float)
        ax.plot(similarity[fnmr > 0], fnmr[fnmr > 0], label="FNMR")
    ax.set_yscale("log")
    ax.set_xlabel("similarity threshold")
    ax.grid(True, which="both", lw=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


# The ACLU experiment


def write_aclu_report(report: dict, out_dir: Path, pairs: dict[str, list[dict]]) -> None:
    """``pairs``: per threshold name, the top false pairs with ``probe_path`` and ``gallery_path`` to show."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(report, out_dir / "report.json")
    (out_dir / "summary.md").write_text(aclu_summary(report), encoding="utf-8")
    (out_dir / "report.html").write_text(aclu_html(report, pairs), encoding="utf-8")


def _share(part: dict) -> str:
    return f"{part['count']}/{part['of']} ({pct(part['share'])})" if part["of"] else "n/a"


def _aclu_rows(report: dict) -> list[list[str]]:
    rows = []
    for t in report["thresholds"]:
        expected = t.get("expected")
        rows.append(
            [
                f"{t['threshold']:g}",
                f"{t['members_probed']}",
                rate_text(t["members_falsely_matched"]),
                f"{t['false_candidates_per_probe']:.2f}",
                _share(t["people_of_colour"]["among_falsely_matched"]),
                _share(t["people_of_colour"]["among_members"]),
                rate_text(t["measured_fmr"], counts=False),
                f"{expected['members_falsely_matched']:.1f}" if expected else "n/a",
            ]
        )
    return rows


_ACLU_HEADER = [
    "threshold",
    "members probed",
    "members falsely matched",
    "false candidates per probe",
    "people of colour among falsely matched",
    "people of colour among members",
    "measured FMR",
    "expected falsely matched (audit FMR × gallery)",
]


def aclu_summary(report: dict) -> str:
    gallery = report["gallery"]
    lines = [
        "# ACLU-style experiment",
        "",
        f"facegate {report['facegate_version']}, model {report['model']['version']} (weights sha256 "
        f"{report['model']['weights_sha256'][:16]}…); generated {report['generated']}.",
        f"Gallery: {gallery['faces']:,} faces from {', '.join(gallery['specs'])} "
        f"({gallery['excluded_overlap']['images']} images of {len(gallery['excluded_overlap']['identities'])} "
        "members who are also in the gallery data excluded). "
        f"Probes: {report['probes']['members']} members, {report['probes']['probed']} searched "
        f"(SearchFacesByImage, MaxFaces {report['max_faces']}).",
        f"{report['person_of_colour_rule']}",
        "",
        "| " + " | ".join(_ACLU_HEADER) + " |",
        "|" + "---|" * len(_ACLU_HEADER),
        *("| " + " | ".join(row) + " |" for row in _aclu_rows(report)),
    ]
    for t in report["thresholds"]:
        lines += ["", f"## Threshold {t['threshold']:g}: falsely matched members by group", ""]
        lines += [
            "| attribute | group | members | falsely matched [95% CI] | false candidates per probe |",
            "|---|---|---|---|---|",
        ]
        for attribute, groups in t["by"].items():
            for group, entry in groups.items():
                lines.append(
                    f"| {attribute} | {group} | {entry['members']} | {rate_text(entry['falsely_matched'])} | "
                    f"{entry['false_candidates_per_probe']:.2f} |"
                )
    points = report.get("operating_points") or []
    if points:
        lines += [
            "",
            f"## Where genuine searches still find their mate first ({report.get('scores', 'raw')} scores)",
            "",
            "| genuine found at rank 1 | threshold | members falsely matched | people of colour among them |",
            "|---|---|---|---|",
        ]
        for p in points:
            reached = p["threshold"] is not None
            poc = p["people_of_colour_among_falsely_matched"]
            lines.append(
                f"| ≥ {p['genuine_target']:.0%} of {p['genuine_searches']:,} | "
                + (f"{p['threshold']:.2f}" if reached else f"unreachable (at most {p['genuine_found']:.1%})")
                + f" | {rate_text(p['members_falsely_matched']) if reached else '—'} | "
                + (pct(poc["share"]) if reached and poc["of"] else "—")
                + " |"
            )
    lines.append("")
    return "\n".join(lines)


def aclu_html(report: dict, pairs: dict[str, list[dict]]) -> str:
    gallery = report["gallery"]
    parts = [
        "<h1>ACLU-style experiment</h1>",
        "<table>",
        _row("facegate version", report["facegate_version"]),
        _row("model", report["model"]["version"]),
        _row("weights sha256", report["model"]["weights_sha256"]),
        _row("gallery", f"{gallery['faces']:,} faces: " + "; ".join(gallery["specs"])),
        _row(
            "excluded (same people as members)",
            f"{gallery['excluded_overlap']['images']} images: " + ", ".join(gallery["excluded_overlap"]["identities"]),
        ),
        _row("probes", f"{report['probes']['probed']} of {report['probes']['members']} members searched"),
        _row("generated", report["generated"]),
        "</table>",
        f"<p class=note>{_e(report['person_of_colour_rule'])} {_e(report['method'])}</p>",
        _table(_ACLU_HEADER, _aclu_rows(report)),
    ]
    for t in report["thresholds"]:
        parts.append(f"<h2>Threshold {t['threshold']:g}</h2>")
        rows = [
            [
                attribute,
                group,
                str(entry["members"]),
                rate_text(entry["falsely_matched"]),
                f"{entry['false_candidates_per_probe']:.2f}",
            ]
            for attribute, groups in t["by"].items()
            for group, entry in groups.items()
        ]
        header = ["attribute", "group", "members", "falsely matched [95% CI]", "false candidates per probe"]
        parts.append(_table(header, rows))
        shown = pairs.get(t["name"], [])
        if shown:
            parts.append(f"<h3>Top {len(shown)} false matches (member photo, gallery face)</h3><div>")
            for pair in shown:
                parts.append(
                    "<div class=pair>"
                    f"<img src='{_thumbnail(pair['probe_path'])}'><img src='{_thumbnail(pair['gallery_path'])}'><br>"
                    f"{_e(pair['member'])} ({_e(pair['ethnicity'])})<br>≈ {_e(pair['gallery'])}<br>"
                    f"similarity {pair['similarity']:.1f}</div>"
                )
            parts.append("</div>")
    return _page("ACLU-style experiment", "\n".join(parts))


def _thumbnail(path: str | Path, size: int = 96) -> str:
    """A small JPEG of an image as a data URI: made into the output file at run time, never stored elsewhere."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


# HTML helpers


def _e(value: object) -> str:
    return html.escape(str(value))


def _row(name: str, value: object) -> str:
    return f"<tr><th>{_e(name)}</th><td style='text-align:left'>{_e(value)}</td></tr>"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(fig: plt.Figure, caption: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f"<figure><img src='data:image/png;base64,{data}'><figcaption class=note>{_e(caption)}</figcaption></figure>"


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>\n"
    )
