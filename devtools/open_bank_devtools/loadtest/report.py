"""Pool latency runs by variant and write a summary per load level, PNG charts and one HTML page.

A variant is a group of runs: by default the name part of ``<name>-<date>.csv``
(every run of the ``python`` preset is variant ``python``), or given as
``VARIANT=PREFIX`` mappings, like the reference's mapping of several runs to
one variant. Within a variant the rows of all runs at the same load level are
pooled: mean and standard error of the end-to-end (BalanceChanged) latency,
its p50/p95/p99, and the mean CPU and memory of the handler, broker and Postgres.
"""

from __future__ import annotations

import csv
import html
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

RUN_NAME = re.compile(r"^(?P<name>.+?)-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}(?:-\d+)?$")
COMPONENTS = ("handler", "broker", "postgres", "endpoint")


@dataclass
class Level:
    variant: str
    load: int
    runs: int
    samples: int
    time_outs: int
    not_ready: int  # loops that ended with the handler not ready (no assignment, waiting, no answer)
    mean_ms: float
    stderr_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    feedback_p50_ms: float
    in_page_p50_ms: float
    answered_per_s: float
    cpu: dict[str, float | None]
    rss_mib: dict[str, float | None]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def variant_of(path: Path, mapping: dict[str, str]) -> str | None:
    for variant, prefix in mapping.items():
        if path.stem.startswith(prefix):
            return variant
    if mapping:
        return None
    match = RUN_NAME.match(path.stem)
    return match.group("name") if match else path.stem


def _float(value: str) -> float | None:
    return float(value) if value not in ("", None) else None


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def summarize(results: Path, mapping: dict[str, str] | None = None) -> list[Level]:
    mapping = mapping or {}
    rows: dict[tuple[str, int], list[dict[str, str]]] = defaultdict(list)
    runs: dict[tuple[str, int], set[str]] = defaultdict(set)
    for path in sorted(results.glob("*.csv")):
        variant = variant_of(path, mapping)
        if variant is None:
            continue
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                key = (variant, int(row["load_target"]))
                rows[key].append(row)
                runs[key].add(path.stem)
    levels = []
    for (variant, load), group in sorted(rows.items()):
        latencies = [v for r in group if (v := _float(r["balance_ms"])) is not None]
        feedback = [v for r in group if (v := _float(r["feedback_ms"])) is not None]
        # a level where every probe timed out is kept (its latencies empty): it is what ended the run
        nan = float("nan")
        in_page = [v for r in group if (v := _float(r.get("in_page_ms", ""))) is not None]
        stdev = statistics.stdev(latencies) if len(latencies) > 1 else 0.0
        cpu, rss = {}, {}
        for c in COMPONENTS:
            cpu[c] = _mean([v for r in group if (v := _float(r.get(f"{c}_cpu", ""))) is not None])
            rss[c] = _mean([v for r in group if (v := _float(r.get(f"{c}_rss_mib", ""))) is not None])
        levels.append(
            Level(
                variant=variant,
                load=load,
                runs=len(runs[(variant, load)]),
                samples=len(latencies),
                time_outs=sum(int(r["timed_out"]) for r in group),
                not_ready=sum(r.get("handler_ready") == "0" for r in group),
                mean_ms=statistics.fmean(latencies) if latencies else nan,
                stderr_ms=stdev / math.sqrt(len(latencies)) if latencies else nan,
                p50_ms=percentile(latencies, 50) if latencies else nan,
                p95_ms=percentile(latencies, 95) if latencies else nan,
                p99_ms=percentile(latencies, 99) if latencies else nan,
                feedback_p50_ms=percentile(feedback, 50) if feedback else float("nan"),
                in_page_p50_ms=percentile(in_page, 50) if in_page else float("nan"),
                answered_per_s=statistics.fmean(float(r["load_answered"]) for r in group),
                cpu=cpu,
                rss_mib=rss,
            )
        )
    return levels


def _cell(value: float | None, digits: int = 1) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


HEADERS = [
    "variant",
    "load/s",
    "answered/s",
    "runs",
    "samples",
    "time-outs",
    "not ready",
    "mean ms",
    "± s.e.",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "feedback p50 ms",
    "in-page p50 ms",
    "handler CPU %",
    "handler MiB",
    "broker CPU %",
    "broker MiB",
    "postgres CPU %",
    "postgres MiB",
    "endpoint CPU %",
    "endpoint MiB",
]


def table_rows(levels: list[Level]) -> list[list[str]]:
    return [
        [
            lv.variant,
            str(lv.load),
            _cell(lv.answered_per_s, 0),
            str(lv.runs),
            str(lv.samples),
            str(lv.time_outs),
            str(lv.not_ready),
            _cell(lv.mean_ms),
            _cell(lv.stderr_ms),
            _cell(lv.p50_ms),
            _cell(lv.p95_ms),
            _cell(lv.p99_ms),
            _cell(lv.feedback_p50_ms),
            _cell(lv.in_page_p50_ms),
            *(x for c in COMPONENTS for x in (_cell(lv.cpu[c]), _cell(lv.rss_mib[c]))),
        ]
        for lv in levels
    ]


def charts(levels: list[Level], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = sorted({lv.variant for lv in levels})
    specs = [
        ("latency.png", "End-to-end latency (BalanceChanged), p50 and p99", "ms", None),
        ("cpu.png", "Average CPU of the command handler", "% of one core", "cpu"),
        ("memory.png", "Average memory (RSS) of the command handler", "MiB", "rss_mib"),
    ]
    written = []
    for filename, title, unit, attr in specs:
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        for variant in variants:
            mine = [lv for lv in levels if lv.variant == variant]
            loads = [lv.load for lv in mine]
            if attr is None:
                line = ax.plot(loads, [lv.p50_ms for lv in mine], marker="o", label=f"{variant} p50")[0]
                ax.plot(
                    loads, [lv.p99_ms for lv in mine], linestyle="--", color=line.get_color(), label=f"{variant} p99"
                )
                # what the latency of answered probes hides: the levels with time-outs or a handler not ready
                for lv in mine:
                    marks = [
                        f"{n} {what}" for n, what in ((lv.time_outs, "time-out"), (lv.not_ready, "not ready")) if n
                    ]
                    if marks:
                        ax.axvline(lv.load, color="red" if lv.time_outs else "orange", alpha=0.35, linewidth=1)
                        ax.annotate(
                            ", ".join(marks), (lv.load, 1), xycoords=("data", "axes fraction"), rotation=90,
                            va="top", ha="right", fontsize=7, color="red" if lv.time_outs else "darkorange",
                        )  # fmt: skip
            else:
                points = [
                    (lv.load, getattr(lv, attr)["handler"]) for lv in mine if getattr(lv, attr)["handler"] is not None
                ]
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=variant)
        ax.set_title(title)
        ax.set_xlabel("additional load (background commands/s)")
        ax.set_ylabel(unit)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        path = out / filename
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def timeline_chart(results: Path, out: Path, mapping: dict[str, str] | None = None, most: int = 6) -> Path | None:
    """Each run's probe latency over its time, with every time-out (red x on the top edge) and every loop
    that ended with the handler not ready (orange band): a run that lost its group shows as such."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [p for p in sorted(results.glob("*.csv")) if variant_of(p, mapping or {}) is not None][-most:]
    if not paths:
        return None
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    labelled: set[str] = set()

    def once(label: str) -> str:
        """The legend label the first time, then none (matplotlib leaves out labels starting with _)."""
        if label in labelled:
            return "_" + label
        labelled.add(label)
        return label

    for path in paths:
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if _float(r.get("time_s", "")) is not None]
        times = [float(r["time_s"]) for r in rows]
        ax.plot(times, [_float(r["balance_ms"]) or float("nan") for r in rows], linewidth=0.8, label=path.stem)
        outs = [float(r["time_s"]) for r in rows if r["timed_out"] == "1"]
        if outs:
            ax.plot(outs, [1.0] * len(outs), "x", color="red", transform=ax.get_xaxis_transform(), clip_on=False,
                    label=once("time-out"))  # fmt: skip
        previous = 0.0
        for t, r in zip(times, rows, strict=True):
            if r.get("handler_ready") == "0":
                ax.axvspan(previous, t, color="orange", alpha=0.25, linewidth=0, label=once("handler not ready"))
            previous = t
    ax.set_title("Probe latency (BalanceChanged) over each run, time-outs and the handler not ready marked")
    ax.set_xlabel("time since the run started (s)")
    ax.set_ylabel("ms")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "timeline.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(results: Path, out: Path, mapping: dict[str, str] | None = None) -> dict[str, Path]:
    levels = summarize(results, mapping)
    if not levels:
        raise ValueError(f"no latency results in {results}")
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(levels)
    summary_csv = out / "summary.csv"
    with open(summary_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADERS)
        writer.writerows(rows)
    summary_md = out / "summary.md"
    summary_md.write_text(
        "| " + " | ".join(HEADERS) + " |\n|" + "---|" * len(HEADERS) + "\n"
        + "".join("| " + " | ".join(r) + " |\n" for r in rows)
    )  # fmt: skip
    images = charts(levels, out)
    timeline = timeline_chart(results, out, mapping)
    if timeline is not None:
        images.append(timeline)
    table = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>\n" for r in rows)
    page = out / "index.html"
    page.write_text(
        f"""<!doctype html>
<html><head><meta charset="utf-8"><title>open-bank command handler: latency</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}img{{max-width:100%;margin:1em 0}}</style></head>
<body><h1>End-to-end latency of the command handler</h1>
<p>Runs pooled by variant; one row per background load level. Latency is from sending a probe command until its
BalanceChanged arrived (feedback p50: until the answer arrived); in the browser variants, from the click in
headless Chromium until the page showed the new transaction, with load/s the generators' most (4 transfers/s
each); CPU in % of one core; memory is RSS.
Time-outs and loops that ended with the handler not ready (its /health/ready: no partitions assigned,
waiting for a dependency, no answer) are counted in the table and marked on the charts.
Source files: {html.escape(str(results))}.</p>
{"".join(f'<img src="{p.name}" alt="{p.stem}">' for p in images)}
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)}</tr>
{table}</table></body></html>
"""
    )
    return {"csv": summary_csv, "markdown": summary_md, "html": page, **{p.stem: p for p in images}}
