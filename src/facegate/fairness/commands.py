"""``facegate fairness ...``: the fairness audit and the ACLU experiment from the command line.

Both take ``--data DIR`` (default $FACEGATE_HOME, else ./facegate-data), where embeddings are cached and the
experiment's gallery collection is kept. Errors print one line and exit 1.
"""

from __future__ import annotations

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

    with one_line_errors(), _RichReporter() as reporter:
        report = run_audit(
            dataset,
            to,
            data_dir(data, ctx),
            thresholds=tuple(threshold) if threshold else SIMILARITY_THRESHOLDS,
            workers=workers,
            reporter=reporter,
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
    out.print(f"wrote {to / 'report.json'}, {to / 'report.html'}, {to / 'summary.md'}", markup=False)


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
    from facegate.fairness.aclu import THRESHOLDS, audit_report_of, run_aclu
    from facegate.fairness.report import pct, rate_text

    with one_line_errors(), _RichReporter() as reporter:
        report = run_aclu(
            probes,
            members,
            gallery,
            to,
            data_dir(data, ctx),
            overlap=overlap,
            thresholds=tuple(threshold) if threshold else THRESHOLDS,
            audit_report=audit_report_of(audit_json) if audit_json else None,
            workers=workers,
            reporter=reporter,
        )
    table = Table(title=f"Members falsely matched against {report['gallery']['faces']:,} gallery faces")
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
    out.print(f"wrote {to / 'report.json'}, {to / 'report.html'}, {to / 'summary.md'}", markup=False)


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
