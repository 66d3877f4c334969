"""The latency test, the report and the benchmark run to the end and write well-formed output.

Only completion and form are checked here, never a timing: speed is what the
tools measure, on a machine left alone, not what a test asserts.
"""

import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from open_bank_devtools.loadtest.latency import COLUMNS, LatencyConfig

from ..conftest import TEST_BROKER, Services, free_port, stack_directory

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def recording_python(folder: Path) -> tuple[Path, Path]:
    """An interpreter that notes its arguments in a file, then is this one: which process did a tool start?"""
    marker = folder / "handler-python-used"
    wrapper = folder / "handler-python"
    wrapper.write_text(f'#!/bin/sh\necho "$@" > {shlex.quote(str(marker))}\nexec {shlex.quote(sys.executable)} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, marker


def test_loop_sh_with_the_ci_preset_writes_results_and_a_report(tmp_path: Path) -> None:
    results = tmp_path / "results"
    # the handler under test is started by HANDLER_PYTHON (by default .venv-product's interpreter)
    handler_python, marker = recording_python(tmp_path)
    env = {
        **os.environ,
        "HANDLER_PYTHON": str(handler_python),
        "RESULTS_DIR": str(results),
        "LATENCY_STACK_DIR": str(stack_directory("latency")),
        "LATENCY_BROKER_PORT": str(free_port()),
        "LATENCY_CONTROLLER_PORT": str(free_port()),
        "LATENCY_REGISTRY_PORT": str(free_port()),
        "LATENCY_DB_PORT": str(free_port()),
        "LATENCY_HEALTH_PORT": str(free_port()),
        "LATENCY_ENDPOINT_PORT": str(free_port()),
        "BROKER": TEST_BROKER,
    }
    run = subprocess.run(["scripts/loop.sh", "1", "ci"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "met the criterion" in run.stdout
    assert marker.read_text().split() == ["-m", "command_handler", "run"]
    (path,) = results.glob(f"ci-{TEST_BROKER}-*.csv")
    config = LatencyConfig.load("ci")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    assert config.min_loops <= len(rows) <= config.max_loops
    assert [int(r["loop"]) for r in rows] == list(range(1, len(rows) + 1))
    for row in rows:
        assert row["step"].split()[0] in ("deposit", "transfer")
        assert int(row["timed_out"]) in (0, 1)
        assert int(row["load_target"]) == config.load_at(int(row["loop"]))
        float(row["load_offered"]), float(row["load_answered"])
        if row["balance_ms"]:
            assert float(row["balance_ms"]) >= 0
        measured = int(row["loop"]) % config.measure_every == 0
        assert bool(row["handler_rss_mib"]) == measured and bool(row["postgres_rss_mib"]) == measured
        assert row["handler_ready"] in ("0", "1") and row["handler_state"]  # the handler's health each loop
    assert all(int(r["reason_mismatches"]) == 0 for r in rows)  # the handler gave the provoked reasons

    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "command_handler",
            "report",
            "--results",
            str(results),
            "--out",
            str(results / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    for name in ("latency.png", "cpu.png", "memory.png", "timeline.png"):
        assert (results / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (results / "report" / "index.html").read_text()
    assert page.count("<img ") == 4 and f"<td>ci-{TEST_BROKER}</td>" in page
    with open(results / "report" / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert {int(r["load/s"]) for r in summary} == {int(r["load_target"]) for r in rows}


def loop_env(results: Path) -> dict[str, str]:
    return {
        **os.environ,
        "RESULTS_DIR": str(results),
        "LATENCY_STACK_DIR": str(stack_directory("latency")),
        "LATENCY_BROKER_PORT": str(free_port()),
        "LATENCY_CONTROLLER_PORT": str(free_port()),
        "LATENCY_REGISTRY_PORT": str(free_port()),
        "LATENCY_DB_PORT": str(free_port()),
        "LATENCY_HEALTH_PORT": str(free_port()),
        "BROKER": TEST_BROKER,
    }


def test_a_short_soak_holds_its_load_and_reports_the_rss_trend(tmp_path: Path) -> None:
    """The soak preset, shortened: a constant load for its whole time, the RSS trend and time-outs printed."""
    soak = LatencyConfig.load("soak")
    assert soak.load_step == 0 and soak.min_loops == soak.max_loops  # constant load, for the whole time
    config = tmp_path / "soak-short.toml"
    config.write_text(
        'name = "soak-short"\ninterval_ms = 250\nmax_loops = 24\nmin_loops = 24\nbatch_cycle = 24\n'
        "load_start = 50\nload_step = 0\nusers = 20\nmeasure_every = 4\n"
    )
    results = tmp_path / "results"
    run = subprocess.run(
        ["scripts/loop.sh", "1", str(config)], cwd=ROOT, env=loop_env(results), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (path,) = results.glob("soak-short-*.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 and {r["load_target"] for r in rows} == {"50"}
    (trend,) = [line for line in run.stdout.splitlines() if line.startswith("handler RSS:")]
    assert "(6 samples)" in trend and "MiB per 10 min" in trend
    assert f"{path}: " in run.stdout and " time-outs" in run.stdout


def test_bench_prints_the_ratio_and_writes_its_results(services: Services, tmp_path: Path) -> None:
    # the handler is started by the interpreter --handler-python names (scripts/bench.sh: .venv-product's)
    handler_python, marker = recording_python(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "command_handler", "bench", "--transfers", "1500", "--accounts", "50",
         "--pgbench-seconds", "2", "--results", str(tmp_path), "--handler-python", str(handler_python)],
        env={**services.env, "PATH": os.environ["PATH"]},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "ratio handler/pgbench:" in run.stdout
    assert marker.read_text().split() == ["-m", "command_handler", "run"]
    (path,) = tmp_path.glob("bench-*.json")
    result = json.loads(path.read_text())
    assert result["handler_python"] == str(handler_python)
    assert result["transfers"] == 1500 and result["confirmed"] == 1500
    # the four figures the benchmark is for, last (before the line naming its files)
    figures = [line.split(":")[0] for line in run.stdout.splitlines()[-5:-1]]
    assert figures == ["commands/s", "handler CPU per command", "handler peak RSS", "ratio handler/pgbench"]
    for key in (
        "commands_per_s",
        "pgbench_tps",
        "ratio",
        "handler_peak_rss_mib",
        "latency_p99_ms",
        "handler_cpu_us_per_command",
    ):
        assert result[key] > 0, key
    assert result["latency_p50_ms"] <= result["latency_p95_ms"] <= result["latency_p99_ms"]
