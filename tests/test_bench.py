"""The benchmark script runs every scenario end to end in its quick mode."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
SCENARIOS = (
    "ceiling",
    "submission",
    "delivery_throughput",
    "latency_light",
    "latency_heavy",
    "recovery",
    "isolation",
    "backlog",
)


def _numbers(figures: dict[str, object]) -> dict[str, float]:
    return {
        key: value
        for key, value in figures.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def test_quick_run_reports_every_scenario(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(output.read_text())

    assert report["quick"] is True
    assert report["store"] == "sqlite"
    assert report["machine"]["cpu_count"] >= 1
    assert report["machine"]["python"]
    assert report["machine"]["packages"]["aiohttp"]
    assert list(report["scenarios"]) == list(SCENARIOS)
    for name in SCENARIOS:
        figures = _numbers(report["scenarios"][name])
        assert figures, f"{name} has no numeric figures"
        for key, value in figures.items():
            assert math.isfinite(value), f"{name}.{key} is {value}"
    assert report["scenarios"]["ceiling"]["requests_per_s"] > 0
    assert report["scenarios"]["ceiling"]["signature_failures"] == 0
    assert report["scenarios"]["delivery_throughput"]["requests_per_s"] > 0
    assert report["scenarios"]["delivery_throughput"]["signature_failures"] == 0
    assert report["scenarios"]["delivery_throughput"]["signatures_checked"] > 0
    assert (
        report["scenarios"]["latency_light"]["p99_ms"]
        >= report["scenarios"]["latency_light"]["p50_ms"]
    )
    assert report["scenarios"]["backlog"]["deliveries"] == report["sizes"]["backlog"]
    assert report["scenarios"]["backlog"]["signature_failures"] == 0
    assert report["scenarios"]["backlog"]["rss_peak_retries_mib"] > 0
    assert report["scenarios"]["backlog"]["store_bytes_seeded"] > 0
    # The table goes to standard output, one line per figure.
    assert "delivery throughput" in completed.stdout
    assert "backlog" in completed.stdout
