"""The report's HTML page renders offline in headless Chromium: sortable leaderboard, inlined curves."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from harness.report import Settings, build_report
from harness.report.synthetic import write_sweep

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",
]

PROBE = """<script>
window.addEventListener('load', function () {
  var table = document.getElementById('leaderboard1');
  var heads = Array.from(table.tHead.rows[0].cells).map(function (c) { return c.textContent; });
  var col = heads.indexOf('score');
  table.tHead.rows[0].cells[col].click();
  var first = table.tBodies[0].rows[0].cells[col].getAttribute('data-v');
  var shown = Array.from(document.images).filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute('data-probe', 'first=' + first + ';images=' + shown.length);
});
</script></body>"""


def chromium() -> str:
    """The chromium binary; fails in CI (CI=true) when it is missing, skips elsewhere."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    message = "chromium is not installed: apt-get update && apt-get install -y chromium"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI is set and {message}")
    pytest.skip(message)


def test_report_page_renders_with_table_and_images(tmp_path):
    browser = chromium()
    write_sweep(tmp_path / "runs", selectors=("random", "bids"), budgets=(0.05, 0.2), seeds=(0, 1), n_per_task=20)
    report = build_report(tmp_path / "runs", Settings(n_boot=200), tmp_path / "out", ["acc"])
    page = (tmp_path / "out" / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # nothing to fetch: it opens offline
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE, 1))
    done = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = done.stdout
    assert done.returncode == 0 and "<table" in dom, done.stderr[-2000:]
    assert 'id="leaderboard1"' in dom and 'id="diagnostics1"' in dom
    assert dom.count("data:image/png;base64,") == len(report.images) == 2
    for variant in ("random", "bids", "full"):
        assert f"<td>{variant}</td>" in dom
    found = re.search(r'data-probe="first=([-0-9.e]+);images=(\d+)"', dom)
    assert found, "the page's script did not run"
    lowest = min(report.tables[next(iter(report.tables))]["score"])
    assert float(found.group(1)) == pytest.approx(lowest)  # clicking 'score' sorted the rows ascending
    assert int(found.group(2)) == 2  # both curves decoded and displayed
