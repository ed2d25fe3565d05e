"""The README's main command, unattended: `fraud demo --duration 60` exits 0 with decisions.

Named to run last: it uses the platform's real topics, Feast project and model name, as a
user's first run does.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from fraudcore.settings import Settings


@pytest.mark.slow
@pytest.mark.timeout(900)  # backfill, training and a minute of live traffic
def test_demo_runs_unattended_and_produces_decisions(stack: Settings) -> None:
    cmd = [
        sys.executable,
        "-m",
        "fraud_app.cli",
        "demo",
        "--duration",
        "60",
        "--rate",
        "200",
        "--days",
        "45",
        "--customers",
        "300",
        "--terminals",
        "600",
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "120"}
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    totals = [int(n.replace(",", "")) for n in re.findall(r"\(total ([\d,]+)\)", done.stdout)]
    assert totals, done.stdout[-3000:]
    # Everything shares two cores here, so scoring lags the producer (see the benchmark);
    # what matters is that the loop ran and decided.
    assert totals[-1] >= 500
