"""The console's browser assets: the vendored libraries are the pinned registry files (their
hashes as recorded), with their licences, and no page loads anything from elsewhere."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[2] / "console" / "fraud_console" / "static"
TEMPLATES = STATIC.parent / "templates"
ROW = re.compile(
    r"^\| `(?P<file>[^`]+)` \| `(?P<package>[^`]+)` \| `[^`]+` \| [^|]+\(`(?P<licence>[^`]+)`\) \| `(?P<sha256>[0-9a-f]{64})` \|$"
)


def recorded() -> list[dict[str, str]]:
    rows = [
        m.groupdict() for line in (STATIC / "README.md").read_text().splitlines() if (m := ROW.match(line))
    ]
    assert rows, "no vendored file recorded in static/README.md"
    return rows


@pytest.mark.parametrize("row", recorded(), ids=lambda row: row["file"])
def test_vendored_files_are_the_recorded_versions(row: dict[str, str]) -> None:
    path = STATIC / row["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"], (
        f"{row['file']} differs from {row['package']} as recorded in static/README.md"
    )
    assert (STATIC / row["licence"]).read_text().strip(), f"no licence for {row['package']}"


def test_every_static_file_is_recorded_or_our_own() -> None:
    own = {"README.md", "console.js", "console.css"}
    vendored = {row["file"] for row in recorded()} | {row["licence"] for row in recorded()}
    assert {p.name for p in STATIC.iterdir()} == own | vendored


def test_pages_load_only_the_consoles_own_files() -> None:
    for template in TEMPLATES.glob("*.html"):
        text = template.read_text()
        for url in re.findall(r'(?:src|href)="([^"]+)"', text):
            assert url.startswith("/"), f"{template.name}: {url} is not served by the console"
            if url.startswith("/static/"):
                assert (STATIC / url.removeprefix("/static/")).is_file(), f"{template.name}: {url} is missing"
        assert "<script>" not in text, f"{template.name}: inline script (the CSP forbids it)"
        assert not re.search(r"<[^>]*\son[a-z]+=", text), f"{template.name}: inline event handler"
