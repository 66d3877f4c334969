"""The report's arithmetic and grouping, on small made-up results."""

import csv
from pathlib import Path

import pytest

from open_bank_devtools.loadtest.latency import COLUMNS, LatencyConfig
from open_bank_devtools.loadtest.report import percentile, summarize, variant_of, write_report


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([7.0], 99) == 7


def test_variant_is_the_name_before_the_date_or_a_mapping() -> None:
    assert variant_of(Path("python-2026-11-22-07-30.csv"), {}) == "python"
    assert variant_of(Path("python-2026-11-22-07-30-2.csv"), {}) == "python"
    assert variant_of(Path("run7-2026-01-01-00-00.csv"), {"batched": "run"}) == "batched"
    assert variant_of(Path("other-2026-01-01-00-00.csv"), {"batched": "run"}) is None


def test_load_ramp_of_a_preset() -> None:
    config = LatencyConfig(load_start=10, load_step=50, batch_cycle=10)
    assert [config.load_at(n) for n in (1, 10, 11, 21)] == [10, 10, 60, 110]
    assert LatencyConfig.load("ci").max_loops > LatencyConfig.load("ci").min_loops
    with pytest.raises(ValueError, match="no latency config"):
        LatencyConfig.load("nonexistent")


def write_run(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in COLUMNS})


def test_runs_of_a_variant_are_pooled_per_load_level(tmp_path: Path) -> None:
    base = {"step": "deposit 10.00", "timed_out": 0, "load_offered": 10, "load_answered": 10, "reason_mismatches": 0}
    write_run(
        tmp_path / "v-2026-01-01-00-00.csv",
        [{**base, "loop": 1, "load_target": 0, "feedback_ms": 1, "balance_ms": 10, "handler_cpu": 5, "handler_rss_mib": 80},
         {**base, "loop": 2, "load_target": 50, "feedback_ms": 1, "balance_ms": 30}],
    )  # fmt: skip
    write_run(
        tmp_path / "v-2026-01-02-00-00.csv",
        [{**base, "loop": 1, "load_target": 0, "feedback_ms": 1, "balance_ms": 20, "timed_out": 1}],
    )
    levels = {lv.load: lv for lv in summarize(tmp_path)}
    assert set(levels) == {0, 50}
    zero = levels[0]
    assert (zero.variant, zero.runs, zero.samples, zero.time_outs) == ("v", 2, 2, 1)
    assert zero.mean_ms == 15 and zero.p50_ms == 10 and zero.p99_ms == 20
    assert zero.stderr_ms == pytest.approx(5.0)
    assert zero.cpu["handler"] == 5 and zero.rss_mib["handler"] == 80 and zero.cpu["broker"] is None
    written = write_report(tmp_path, tmp_path / "report")
    assert written["latency"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<table>" in written["html"].read_text()
    assert written["markdown"].read_text().count("\n") == 2 + 2  # header, rule, two levels


def test_time_outs_and_a_handler_not_ready_are_counted_and_charted(tmp_path: Path) -> None:
    base = {"step": "deposit 10.00", "load_offered": 10, "load_answered": 10, "reason_mismatches": 0, "feedback_ms": 1}
    write_run(
        tmp_path / "v-2026-01-01-00-00.csv",
        [{**base, "loop": 1, "time_s": 1, "load_target": 0, "balance_ms": 10, "timed_out": 0, "handler_ready": 1},
         {**base, "loop": 2, "time_s": 2, "load_target": 50, "balance_ms": "", "timed_out": 1, "handler_ready": 0,
          "handler_state": "joining the consumer group"},
         {**base, "loop": 3, "time_s": 3, "load_target": 50, "balance_ms": "", "timed_out": 1, "handler_ready": 0}],
    )  # fmt: skip
    levels = {lv.load: lv for lv in summarize(tmp_path)}
    # the level where every probe timed out is not dropped: it is what ended the run
    assert (levels[50].time_outs, levels[50].not_ready, levels[50].samples) == (2, 2, 0)
    assert (levels[0].time_outs, levels[0].not_ready) == (0, 0)
    written = write_report(tmp_path, tmp_path / "report")
    assert written["timeline"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "not ready" in written["markdown"].read_text()
