"""The local supervisor starts a component that died again, with a backoff, as a
Deployment would: a crash in the demo or the benchmark is not the end of that component."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from fraud_app.supervisor import Component, Platform
from fraudcore.settings import Settings

# Up long enough to count as started (1.5 s), then dies with exit code 3.
DIES_AFTER_2S = [
    sys.executable,
    "-c",
    "import time; print('run', flush=True); time.sleep(2); raise SystemExit(3)",
]


def test_a_component_that_dies_is_started_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    part = Component("flaky", DIES_AFTER_2S, log=tmp_path / "flaky.log")
    platform = Platform(Settings(_env_file=None), [part])
    platform.start(report=lambda _msg: None, timeout_s=10)
    try:
        with caplog.at_level("WARNING"):
            deadline = time.monotonic() + 40  # generous: a loaded machine starts Python slowly
            runs = lambda: (tmp_path / "flaky.log").read_text().count("run")  # noqa: E731
            # A restart is counted when it is started; its output follows once Python is up.
            while (platform.restarts.get("flaky", 0) < 2 or runs() < 3) and time.monotonic() < deadline:
                time.sleep(0.2)
        assert platform.restarts.get("flaky", 0) >= 2
        assert "flaky exited with 3" in caplog.text
        # The backoff doubles: the second start waited longer than the first.
        assert "again in 1 s" in caplog.text
        assert "again in 2 s" in caplog.text
        assert (tmp_path / "flaky.log").read_text().count("run") >= 3, "one log, appended by every run"
    finally:
        platform.stop()
    assert platform.alive() == []


def test_a_stopped_platform_starts_nothing_again(tmp_path: Path) -> None:
    part = Component("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], log=tmp_path / "s.log")
    platform = Platform(Settings(_env_file=None), [part])
    platform.start(report=lambda _msg: None, timeout_s=10)
    platform.stop()
    time.sleep(2)
    assert platform.alive() == []
    assert platform.restarts == {}
