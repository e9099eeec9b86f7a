"""Leaderboards and scaling curves from many run records: `python -m harness.report results/`.

load -> (per comparability group) leaderboard + diagnostics -> plots -> Markdown, CSV, HTML (and wandb).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.errors import HarnessError
from harness.report import diagnostics as diag
from harness.report import html as page
from harness.report import leaderboard as lb
from harness.report import plots
from harness.report.load import comparability_groups, group_differences, label_settings, load_records

__all__ = ["Report", "Settings", "build_report", "method_text"]
Settings = lb.Settings


@dataclass
class Report:
    """What a report produced: its folder, the files written, the tables and the Markdown text."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    diagnostics: dict[str, pd.DataFrame] = field(default_factory=dict)
    images: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    markdown: str = ""


def method_text(s: Settings) -> str:
    """How the numbers were computed, in the words the README uses."""
    level = round(100 * (1 - s.alpha))
    interval = "Wilson score" if s.interval == "wilson" else "Clopper-Pearson"
    test = (
        f"a paired bootstrap ({s.n_boot} draws) over the same evaluation items, resampled within each task, and "
        "over seeds (jointly, seed matched with seed, when both rows ran the same seeds); p is the null-centred "
        "bootstrap p-value and P(better) the share of draws in which the row beats random"
        if s.test == "bootstrap"
        else "McNemar's exact test on the items each matched pair of seeds gets right or wrong, pooled over seeds"
    )
    correction = "Holm-adjusted over all rows compared with random" if s.correction == "holm" else "not adjusted"
    diff_interval = (
        f"The interval of the difference to random is the {level}% percentile interval of the bootstrap, not "
        "adjusted for multiple comparisons, while ▲/▼ follow the Holm-adjusted p-values, so an interval that "
        "excludes 0 can come without a mark. "
        if s.test == "bootstrap" and s.correction == "holm"
        else ""
    )
    return (
        "Rows: one per variant, resolved selector parameters, stage-seed overrides and budget (a label in {} names "
        "what sets two rows of one variant apart); records trained with different mixed precision are in separate "
        f"tables. Score: the mean over seeds of each run's macro average ({s.metric}). Interval ({level}%): per "
        f"task a {interval} interval for 0/1 metrics (Student t over items for continuous ones) on the "
        "seed-averaged result, combined over tasks in quadrature, plus the seed-to-seed uncertainty (standard "
        "deviation pooled over the rows at that budget, or over all rows when that budget gives fewer than 4 "
        "degrees of freedom; t quantile; divided by the square root of the row's seed count), added in "
        f"quadrature on each side. Versus random at the same budget: {test}; p-values {correction}; "
        f"▲/▼ mark significant wins/losses. {diff_interval}Rank: rows at one budget are ranked by score, but any "
        "two rows whose pairwise difference is not significant (after the same correction over all pairs at that "
        "budget) share a rank, as does every row between them, so different ranks always mean a significant "
        "difference."
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60]


def build_report(
    folder: str | Path,
    settings: Settings | None = None,
    out: str | Path | None = None,
    curve_metrics: list[str] | None = None,
) -> Report:
    """Read every complete record under `folder` and write leaderboard.{md,csv}, curves and report.html.

    curve_metrics: the metrics to draw curves for (default: every metric the records tabulate).
    """
    settings = settings or Settings()
    if settings.correction not in ("holm", "none"):
        raise HarnessError(f"unknown correction {settings.correction!r}; use holm or none")
    if not 0 < settings.alpha < 0.5:
        raise HarnessError(f"alpha must be between 0 and 0.5 (got {settings.alpha}); e.g. --alpha 0.05")
    records = load_records(folder)
    out_dir = Path(out) if out else Path(folder) / "report"
    report = Report(out_dir=out_dir, notes=[f"read {records.counts['records']} run record(s) under {folder}"])
    report.notes += records.notes()
    available = lb.available_metrics(records.results, records.items)
    if settings.metric not in available:
        raise HarnessError(f"unknown metric {settings.metric!r}; the records have: {', '.join(available)}")

    groups = comparability_groups(records.results)
    if len(groups) > 1:
        report.notes.append(
            f"{len(groups)} groups of records that may not be compared (they differ in "
            f"{', '.join(group_differences(groups))}): one leaderboard each"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    in_results = set(records.results["metric"].unique())
    tabulated = [m for m in available if m in in_results]
    unknown = sorted(set(curve_metrics or []) - set(available))
    if unknown:
        raise HarnessError(f"no metric {', '.join(unknown)} to plot; the records have: {', '.join(available)}")
    curve_metrics = tabulated if curve_metrics is None else curve_metrics
    sections, md, csv_parts = [], [], []
    for g, (label, frame) in enumerate(groups):
        tag = "" if len(groups) == 1 else f"g{g + 1}_"
        frame, split = label_settings(frame)
        report.notes += [f"group {label}: {note}" for note in split]
        table = lb.leaderboard(frame, records.items, records.manifests, settings)
        if table.empty:
            report.notes.append(f"group {label}: no {settings.metric} results; left out")
            continue
        if table.loc[table["variant"] == lb.BASELINE].empty:
            report.notes.append(f"group {label}: no `random` rows, so no comparison with random")
        if table["n_seeds"].max() < 2:
            report.notes.append(f"group {label}: one seed per row, so intervals cover evaluation items only")
        report.tables[label] = table
        public = lb.public_columns(table)
        csv_parts.append(public.assign(group=label))
        md += [f"## {label}", "", lb.markdown(table, settings.metric, settings.alpha, settings.correction), ""]
        images = []
        for metric in dict.fromkeys([settings.metric, *curve_metrics]):
            summary = (
                table
                if metric == settings.metric
                else lb.summarize(
                    frame, records.items, records.manifests, Settings(**{**settings.__dict__, "metric": metric})
                )
            )
            if summary.empty:
                continue
            images.append(
                plots.scaling_curve(summary, metric, label, out_dir / f"{tag}curve_{_slug(metric)}.png", settings.alpha)
            )
            images.append(plots.cost_curve(summary, metric, label, out_dir / f"{tag}cost_{_slug(metric)}.png"))
        report.images += images
        diagnostics = diag.diagnostics_table(frame, records.manifests)
        section = [
            f"<h2>{page.html.escape(label)}</h2>",
            f"<h3>Leaderboard ({settings.metric})</h3>",
            page.table_html(public, f"leaderboard{g + 1}"),
        ]
        section += ["<h3>Scaling and cost curves</h3>", *[page.image_html(p, p.stem) for p in images]]
        if not diagnostics.empty:
            report.diagnostics[label] = diagnostics
            diagnostics.assign(group=label).to_csv(out_dir / f"{tag}diagnostics.csv", index=False)
            report.files.append(out_dir / f"{tag}diagnostics.csv")
            md += ["### Selection diagnostics: kept % (pool %)", "", diag.markdown(diagnostics), ""]
            section += ["<h3>Selection diagnostics</h3>", page.table_html(diagnostics, f"diagnostics{g + 1}")]
        sections.append("".join(section))
    if not csv_parts:
        raise HarnessError(
            f"no group under {folder} has {settings.metric} results; try --metric with one of {available}"
        )

    report.markdown = "\n".join(
        ["# Leaderboard", "", *[f"- {n}" for n in report.notes], "", *md, method_text(settings), ""]
    )
    (out_dir / "leaderboard.md").write_text(report.markdown)
    pd.concat(csv_parts, ignore_index=True).to_csv(out_dir / "leaderboard.csv", index=False)
    (out_dir / "report.html").write_text(
        page.page("Data-selection leaderboard", sections, report.notes, method_text(settings))
    )
    report.files = [
        out_dir / "leaderboard.md",
        out_dir / "leaderboard.csv",
        *report.files,
        *report.images,
        out_dir / "report.html",
    ]
    return report


def log_to_wandb(report: Report, project: str = "data-selection-harness", mode: str | None = None) -> str:
    """Log the leaderboards (tables) and curves (images) of a report to one wandb run; returns its folder."""
    try:
        import wandb
    except ImportError:
        raise HarnessError("--wandb needs the wandb package; pip install -e '.[wandb]'") from None
    run = wandb.init(
        project=project,
        mode=mode,
        job_type="report",
        name="leaderboard",
        dir=str(report.out_dir),
        reinit="finish_previous",
    )
    data = {}
    for i, table in enumerate(report.tables.values()):
        data[f"leaderboard/{i + 1}"] = wandb.Table(dataframe=lb.public_columns(table).astype(str))
    for i, table in enumerate(report.diagnostics.values()):
        data[f"diagnostics/{i + 1}"] = wandb.Table(dataframe=table)
    for path in report.images:
        data[f"curves/{path.stem}"] = wandb.Image(str(path))
    run.log(data)
    folder = run.dir
    run.finish()
    return folder
