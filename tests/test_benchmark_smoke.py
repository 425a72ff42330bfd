"""The benchmark still runs end to end and reports every metric (numbers are not judged here: no timing asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from postgres_cluster import URL_ENV, find_tool

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = {
    "latency_direct_p50_ms",
    "latency_direct_p99_ms",
    "latency_passthrough_p50_ms",
    "latency_passthrough_p99_ms",
    "latency_sidecar_p50_ms",
    "latency_sidecar_p99_ms",
    "added_passthrough_p50_ms",
    "added_passthrough_p99_ms",
    "added_sidecar_p50_ms",
    "added_sidecar_p99_ms",
    "throughput_direct_rps",
    "throughput_passthrough_rps",
    "throughput_sidecar_rps",
    "cpu_passthrough_ms",
    "cpu_sidecar_ms",
    "throughput_sidecar_vs_passthrough_pct",
    "sidecar_rss_idle_mb",
    "sidecar_rss_peak_mb",
    "sidecar_hwm_mb",
    "latency_openai_direct_p50_ms",
    "latency_translated_p50_ms",
    "added_translated_p50_ms",
    "added_translated_p99_ms",
    "translated_minus_passthrough_route_p50_ms",
    "translate_request_us",
    "translate_stream_us",
    "cli_help_ms",
    "python_pass_ms",
    "cost_month_ms",
    "cost_day_model_ms",
    "blocks_ms",
    "cost_what_if_ms",
    "import_first_ms",
    "import_first_cpu_ms",
    "import_rerun_ms",
}


def _gateway_keys(name: str) -> tuple[set[str], set[str]]:
    """(every metric, the judged ones) of one gateway target in the benchmark."""
    every = {
        f"latency_{name}_p50_ms",
        f"added_{name}_p50_ms",
        f"added_{name}_p99_ms",
        f"throughput_{name}_rps",
        f"throughput_{name}_vs_sidecar_pct",
        f"cpu_{name}_ms",
        f"{name}_rss_peak_mb",
    }
    return every, {f"added_{name}_p50_ms", f"throughput_{name}_vs_sidecar_pct", f"{name}_rss_peak_mb"}


def _report_keys(backend: str) -> set[str]:
    """The gateway report timings on one backend's generated database (all judged)."""
    return {f"gateway_report_{by}_{backend}_ms" for by in ("team", "model", "day", "key")}


DASHBOARD_PAGES = (
    "overview",
    "overview_90d_by_model",
    "teams",
    "team",
    "keys",
    "key",
    "requests",
    "requests_older",
    "requests_by_key",
    "requests_by_status",
    "requests_by_model",
    "request",
    "audit",
    "overview_csv",
)


def _dashboard_keys(backend: str) -> set[str]:
    """Every dashboard page's server time on one backend's generated database (all judged)."""
    return {f"dashboard_{page}_{backend}_ms" for page in DASHBOARD_PAGES}


# the benchmark runs the PostgreSQL gateway when it finds a PostgreSQL, as the gateway tests do
_HAS_POSTGRES = bool(os.environ.get(URL_ENV)) or find_tool("initdb") is not None


def test_quick_benchmark_reports_every_metric(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench.py"),
            "--quick",
            "--ledger-rows",
            "2000",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(out.read_text())["metrics"]
    gateways = ["gateway_sqlite", *(["gateway_postgresql"] if _HAS_POSTGRES else [])]
    gateway_every = set().union(*(_gateway_keys(name)[0] for name in gateways))
    gateway_judged = set().union(*(_gateway_keys(name)[1] for name in gateways))
    backends = ["sqlite", *(["postgresql"] if _HAS_POSTGRES else [])]
    reports = set().union(*(_report_keys(b) | _dashboard_keys(b) for b in backends))
    gateway_every |= reports
    gateway_judged |= reports
    assert set(metrics) == EXPECTED | gateway_every
    for key, metric in metrics.items():
        assert isinstance(metric["value"], int | float), key
        assert metric["value"] >= 0 or key.startswith(("added_", "translated_minus_")), (key, metric["value"])
        assert metric["label"] in done.stdout, f"{metric['label']!r} missing from the table"
    judged = {key for key, metric in metrics.items() if metric["target"] is not None}
    assert judged == {
        "added_sidecar_p50_ms",
        "added_sidecar_p99_ms",
        "throughput_sidecar_vs_passthrough_pct",
        "sidecar_rss_peak_mb",
        "sidecar_hwm_mb",
        "added_translated_p50_ms",
        "cli_help_ms",
        "cost_month_ms",
        "cost_day_model_ms",
        "blocks_ms",
        "cost_what_if_ms",
        "import_first_ms",
        "import_rerun_ms",
        *gateway_judged,
    }
    assert ("pass" in done.stdout) or ("FAIL" in done.stdout)


def test_side_by_side_comparison_runs_two_builds(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "compare.py"),
            "HEAD",
            ".",
            "--requests",
            "5",
            "--throughput-rounds",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if " p50 " in line]
    assert [(row[0], row[1]) for row in rows] == [
        ("anthropic", "HEAD"),
        ("anthropic", "."),
        ("translated", "HEAD"),
        ("translated", "."),
    ]
    throughput = [line.split() for line in done.stdout.splitlines() if " req/s " in line]
    assert [row[0] for row in throughput] == ["HEAD", "."]
    assert "vs HEAD: median" in " ".join(throughput[1])
    assert all(float(row[3]) > 0 for row in rows)


def test_gateway_side_by_side_comparison_runs_two_builds(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "compare_gateway.py"),
            "HEAD",
            ".",
            "--requests",
            "5",
            "--throughput-rounds",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if " added p50 " in line]
    assert [(row[0], row[1]) for row in rows] == [("sqlite", "HEAD"), ("sqlite", ".")]
    assert all(float(row[-2]) > 0 for row in rows)  # requests/s
