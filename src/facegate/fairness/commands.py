"""``facegate fairness ...``: the fairness audit and the ACLU experiment from the command line.

Both take ``--data DIR`` (default $FACEGATE_HOME, else ./facegate-data), where embeddings are cached and the
experiment's gallery collection is kept. Errors print one line and exit 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from facegate.cli_errors import fail, one_line_errors
from facegate.config import data_dir
from facegate.fairness.datasets import SPEC_HELP
from facegate.fairness.embeddings import Reporter

fairness_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Measure demographic bias: audit a labelled dataset, rerun the ACLU experiment.",
)

out = Console()
err = Console(stderr=True)

DataOption = Annotated[
    Path | None, typer.Option("--data", help="Data directory for caches (default $FACEGATE_HOME or ./facegate-data).")
]
OutOption = Annotated[Path, typer.Option("--out", help="Folder for report.json, report.html and summary.md.")]
WorkersOption = Annotated[
    int | None, typer.Option("--workers", min=1, help="Processes for embedding and searching (default: all cores).")
]


class _RichReporter(Reporter):
    """Progress bars on stderr, one per task, and notes printed above them."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}

    def step(self, task: str, done: int, total: int) -> None:
        if task not in self.tasks:
            self.tasks[task] = self.progress.add_task(task, total=total)
        self.progress.update(self.tasks[task], completed=done, total=total)

    def note(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def __enter__(self) -> _RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


@fairness_app.command()
def audit(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option("--dataset", help=f"The labelled dataset: {SPEC_HELP}.")],
    to: OutOption,
    data: DataOption = None,
    threshold: Annotated[
        list[float] | None, typer.Option("--threshold", help="Similarity thresholds (default 80 90 95 99).")
    ] = None,
    workers: WorkersOption = None,
) -> None:
    """Per-group FMR (and FNMR) of facegate on a labelled dataset, with intervals, ratios and figures."""
    from facegate.fairness.audit import SIMILARITY_THRESHOLDS, run_audit
    from facegate.fairness.report import rate_text, ratio_text

    home = data_dir(data, ctx)
    with one_line_errors(), _RichReporter() as reporter:
        report = run_audit(
            dataset,
            to,
            home,
            thresholds=tuple(threshold) if threshold else SIMILARITY_THRESHOLDS,
            workers=workers,
            reporter=reporter,
            scores=_served_scores(home),
        )
    points = report["operating_points"]
    headline = [k for k, p in enumerate(points) if p["name"] in ("similarity 80", "similarity 99")]
    for dimension in report["dimensions"]:
        table = Table(title=f"FMR by {dimension['name']} (95% Clopper–Pearson)")
        table.add_column("group")
        table.add_column("faces", justify="right")
        for k in headline:
            table.add_column(points[k]["name"], justify="right")
        for group, info in dimension["groups"].items():
            cells = [rate_text(dimension["operating_points"][k]["groups"][group]["fmr"]) for k in headline]
            table.add_row(group, f"{info['detected']:,}", *cells)
        out.print(table)
        for k in headline:
            out.print(f"  {points[k]['name']}: {ratio_text(dimension['operating_points'][k]['fmr_disparity'])}")
    _identification_table(report, headline)
    if report.get("raw_report"):
        _side_by_side(json.loads(Path(report["raw_report"]).read_text()), report)
    out.print(f"wrote {to / 'report.json'}, {to / 'report.html'}, {to / 'summary.md'}", markup=False)


def _identification_table(report: dict, headline: list[int]) -> None:
    """Measured 1:N (mate-less searches against random galleries) beside the 1-(1-FMR)^N prediction."""
    from facegate.fairness.metrics import fpir
    from facegate.fairness.report import pct

    points = report["operating_points"]
    for dimension in report["dimensions"]:
        measured = dimension.get("identification") or {}
        if not measured:
            continue
        table = Table(title=f"1:N by {dimension['name']}: mate-less searches, measured (worst probe group)")
        for column in ("gallery", "threshold", "worst group", "false candidates/search", "FPIR", "1-(1-FMR)^N"):
            table.add_column(column, justify="right")
        for size, rows in measured.items():
            for k in headline:
                groups = rows[k]["groups"]
                if not groups:
                    continue
                worst = max(groups, key=lambda g: groups[g]["false_candidates_per_search"])
                fmr = dimension["operating_points"][k]["groups"][worst]["fmr"]["rate"]
                table.add_row(
                    f"{int(size):,}",
                    points[k]["name"],
                    worst,
                    f"{groups[worst]['false_candidates_per_search']:.3f}",
                    pct(groups[worst]["fpir"]["rate"]),
                    pct(fpir(fmr, int(size))) if fmr is not None else "n/a",
                )
        out.print(table)


def _times(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.1f}×"


def _served_scores(home: Path):
    from facegate.engine.models import EMBEDDING_MODEL_VERSION
    from facegate.engine.scores import scoring_for
    from facegate.engine.similarity import similarity_scale

    return scoring_for(home, similarity_scale(EMBEDDING_MODEL_VERSION))


def _side_by_side(raw: dict, served: dict) -> None:
    """Raw and normalised rates per group at equal overall FMR, and which groups' false matches rose."""
    from facegate.fairness.report import pct

    name = served["scores"]["served"]
    points = [k for k, p in enumerate(served["operating_points"]) if p["kind"] == "overall_fmr"]
    for raw_dim, dim in zip(raw["dimensions"], served["dimensions"], strict=True):
        table = Table(title=f"FMR by {dim['name']} at equal overall FMR: raw → {name}")
        table.add_column("group")
        for k in points:
            table.add_column(served["operating_points"][k]["name"], justify="right")
        for group in dim["groups"]:
            cells = []
            for k in points:
                before = raw_dim["operating_points"][k]["groups"][group]["fmr"]["rate"]
                after = dim["operating_points"][k]["groups"][group]["fmr"]["rate"]
                arrow = "" if before is None or after is None or after == before else (" ↑" if after > before else " ↓")
                cells.append(f"{pct(before)} → {pct(after)}{arrow}")
            table.add_row(group, *cells)
        out.print(table)
        for k in points:
            before = raw_dim["operating_points"][k]["fmr_disparity"]["max_over_min"]
            after = dim["operating_points"][k]["fmr_disparity"]["max_over_min"]
            out.print(f"  {served['operating_points'][k]['name']}: worst/best {_times(before)} → {_times(after)}")
    overlap = served["scores"]["cohort_overlap_faces"]
    if overlap:
        out.print(f"warning: {overlap:,} audited faces are in the score cohort: audit faces disjoint from it")


@fairness_app.command()
def aclu(
    ctx: typer.Context,
    probes: Annotated[Path, typer.Option("--probes", help="Folder of the members' photos (congress117/images).")],
    members: Annotated[Path, typer.Option("--members", help="members.csv (bioguide, name, photo_file, ...).")],
    gallery: Annotated[list[str], typer.Option("--gallery", help=f"Gallery dataset, repeatable: {SPEC_HELP}.")],
    to: OutOption,
    overlap: Annotated[
        Path | None, typer.Option("--overlap", help="Members who are also in the gallery data (lfw_name_overlap.csv).")
    ] = None,
    threshold: Annotated[
        list[float] | None, typer.Option("--threshold", help="FaceMatchThreshold, repeatable (default 80 and 99).")
    ] = None,
    audit_json: Annotated[
        Path | None, typer.Option("--audit", help="An audit's report.json: expected counts from its FMR.")
    ] = None,
    data: DataOption = None,
    workers: WorkersOption = None,
) -> None:
    """The ACLU test: search every member of Congress against a gallery of other people; count false matches."""
    from facegate.engine.scores import active_scores
    from facegate.fairness.aclu import THRESHOLDS, audit_report_of, run_aclu

    home = data_dir(data, ctx)
    served = active_scores(home)
    runs = [("raw", to / "raw"), (served, to)] if served != "raw" else [("raw", to)]
    with one_line_errors(), _RichReporter() as reporter:
        for scores, folder in runs:
            report = run_aclu(
                probes,
                members,
                gallery,
                folder,
                home,
                overlap=overlap,
                thresholds=tuple(threshold) if threshold else THRESHOLDS,
                audit_report=audit_report_of(audit_json) if audit_json else None,
                workers=workers,
                reporter=reporter,
                scores=scores,
            )
            _aclu_table(report)
    out.print(f"wrote {to / 'report.json'}, {to / 'report.html'}, {to / 'summary.md'}", markup=False)


def _aclu_table(report: dict) -> None:
    from facegate.fairness.report import pct, rate_text

    table = Table(
        title=f"Members falsely matched against {report['gallery']['faces']:,} gallery faces ({report['scores']} scores)"
    )
    for column in ("threshold", "probed", "falsely matched", "false candidates/probe", "POC among matched", "POC"):
        table.add_column(column, justify="right")
    for t in report["thresholds"]:
        poc = t["people_of_colour"]
        table.add_row(
            f"{t['threshold']:g}",
            str(t["members_probed"]),
            rate_text(t["members_falsely_matched"]),
            f"{t['false_candidates_per_probe']:.2f}",
            pct(poc["among_falsely_matched"]["share"]),
            pct(poc["among_members"]["share"]),
        )
    out.print(table)
    points = report.get("operating_points") or []
    if points:
        table = Table(title=f"Where genuine searches still find their mate first ({report['scores']} scores)")
        for column in ("genuine found at rank 1", "threshold", "members falsely matched", "POC among them", "POC"):
            table.add_column(column, justify="right")
        for p in points:
            reached = p["threshold"] is not None
            poc = p["people_of_colour_among_falsely_matched"]
            table.add_row(
                f"≥ {p['genuine_target']:.0%} of {p['genuine_searches']:,}",
                f"{p['threshold']:.2f}" if reached else f"unreachable (at most {p['genuine_found']:.1%})",
                rate_text(p["members_falsely_matched"]) if reached else "—",
                pct(poc["share"]) if reached and poc["of"] else "—",
                pct(p["people_of_colour_among_members"]["share"]),
            )
        out.print(table)


def _governance(home: Path, ctx: typer.Context):
    from facegate.compose import Settings, build

    store = (ctx.find_root().obj or {}).get("store")
    return build(Settings.from_env(home, **({"store": store} if store else {}))).governance


@fairness_app.command()
def activate(
    ctx: typer.Context,
    report: Annotated[Path, typer.Argument(help="report.json of `facegate fairness audit`.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the audit log).")],
    data: DataOption = None,
) -> None:
    """Make an audit the one the policy gate and search responses use (thresholds justified by measurement)."""
    with one_line_errors():
        curves = _governance(data_dir(data, ctx), ctx).activate_audit(report, reason)
    out.print(f"active fairness audit {curves.audit_id} ({curves.dataset}, model {curves.model_version})")


@fairness_app.command()
def show(ctx: typer.Context, data: DataOption = None) -> None:
    """The active audit's headline numbers: worst groups, calibrated thresholds, expected false candidates."""
    with one_line_errors():
        curves = _governance(data_dir(data, ctx), ctx).active_audit()
    if curves is None:
        fail("no fairness audit is active: run `facegate fairness audit`, then `facegate fairness activate`")
    out.print(f"active fairness audit {curves.audit_id}: {curves.dataset}, model {curves.model_version}")
    table = Table(title="worst group at each threshold")
    for column in ("similarity", "worst group", "its FMR", "false candidates per search in 10k / 1M faces"):
        table.add_column(column)
    for threshold in (80, 90, 95, 99):
        worst = curves.worst_group(threshold)
        table.add_row(
            str(threshold),
            worst.group,
            f"{worst.fmr:.2e}",
            f"{curves.expected_false_candidates(10_000, threshold):,.1f} / "
            f"{curves.expected_false_candidates(1_000_000, threshold):,.0f}",
        )
    out.print(table)
    for target in (1e-3, 1e-4, 1e-5):
        threshold = curves.threshold_for(target)
        where = f"similarity ≥ {threshold:g}" if threshold is not None else "no threshold below 100 reaches it"
        out.print(f"worst-group FMR ≤ {target:g}: {where}")


@fairness_app.command()
def calibrate(
    ctx: typer.Context,
    cohort: Annotated[
        list[str], typer.Option("--cohort", help=f"Cohort dataset, repeatable: {SPEC_HELP} (thousands of faces).")
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the audit log when activated).")] = (
        "score normalisation calibrated"
    ),
    activate: Annotated[
        bool,
        typer.Option(
            "--activate/--no-activate",
            help="Serve them from the next start (--no-activate: only measure and store).",
        ),
    ] = True,
    data: DataOption = None,
    workers: WorkersOption = None,
) -> None:
    """Fit label-free score normalisation on a cohort of faces and measure its similarity table."""
    import numpy as np

    from facegate.engine.scores import calibrate as fit_scores
    from facegate.fairness.datasets import load_dataset
    from facegate.fairness.embeddings import embed_dataset

    home = data_dir(data, ctx)
    with one_line_errors(), _RichReporter() as reporter:
        embedded = [embed_dataset(load_dataset(spec), home, workers=workers, reporter=reporter) for spec in cohort]
        versions = {e.model_version for e in embedded}
        vectors, identities, sources, origin = [], [], [], []
        for n, e in enumerate(embedded):
            rows = np.nonzero(e.detected)[0]
            vectors.append(e.embeddings[rows])
            # Without identity labels every image is its own identity: all its pairs are impostor pairs.
            identities += [f"{e.dataset.spec}|{e.dataset.records[i].identity or i}" for i in rows.tolist()]
            sources.append({"spec": e.dataset.spec, "faces": len(rows), "dataset_sha256": e.dataset_hash})
            origin += [n] * len(rows)
        reporter.note(f"fitting on {sum(len(v) for v in vectors):,} cohort faces")
        calibration = fit_scores(
            np.concatenate(vectors),
            np.array(identities),
            model_version=versions.pop(),
            cohorts=sources,
            sources=np.array(origin),
        )
        calibration.save(home, activate=False)
        if activate:
            _governance(home, ctx).activate_scores(calibration.calibration_id, reason)
    table = Table(title=f"score calibration {calibration.calibration_id}: similarity ↔ measured rates")
    for column in ("similarity", "score", "cohort FMR", "cohort TMR"):
        table.add_column(column, justify="right")
    for anchor, point in zip(calibration.table["anchors"][1:], calibration.table["operating_points"], strict=False):
        tmr = point["tmr"]
        table.add_row(
            f"{anchor['similarity']:g}",
            f"{anchor['score']:.3f}",
            f"{point['fmr']:.2e}",
            "—" if tmr is None else f"{tmr:.1%}",
        )
    out.print(table)
    t = calibration.table
    out.print(
        f"profiles against {t['cohort_faces']:,} cohort faces; the table measured on {t['table_faces']:,} others of "
        f"{t['table_identities']:,} identities, {t['impostor_pairs']:,} impostor pairs; stored in "
        f"{home / 'scores' / calibration.calibration_id}",
        markup=False,
    )
    if not activate:
        out.print(
            f"stored, not served: audit it first (`facegate fairness scores {calibration.calibration_id} --reason …` "
            "serves it)",
            markup=False,
        )
    else:
        out.print(
            f"serving {calibration.calibration_id} from the next start; the fairness audit of record measured the "
            "old scores and no longer gates: run `facegate fairness audit`, then `facegate fairness activate`",
            markup=False,
        )


@fairness_app.command()
def scores(
    ctx: typer.Context,
    serve: Annotated[
        str | None, typer.Argument(help="A calibration id to serve, or 'raw' for dlib's distances.")
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (recorded in the audit log).")] = None,
    data: DataOption = None,
) -> None:
    """Which scores are served (and the calibrations stored), or serve another."""
    from facegate.engine.scores import active_scores, scores_dir

    home = data_dir(data, ctx)
    with one_line_errors():
        if serve is not None:
            if not reason:
                fail("say why with --reason: the change is recorded in the audit log")
            _governance(home, ctx).activate_scores(serve, reason)
    active = active_scores(home)
    out.print(f"serving: {active}", markup=False)
    stored = sorted(p.name for p in scores_dir(home).glob("cal-*")) if scores_dir(home).exists() else []
    for name in stored:
        out.print(f"  {name}{'  (served)' if name == active else ''}", markup=False)
