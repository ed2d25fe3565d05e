"""`make audit` (infra/audit.sh) on throwaway repositories: a clean one passes, and a secret
committed once, even if deleted later, is found in the history, as is a value of the
checkout's own .env that made it into a tracked file. Secrets are made up at run time, so
this file holds none."""

from __future__ import annotations

import json
import secrets
import string
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AUDIT = ROOT / "infra" / "audit.sh"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "audit@example.invalid")
    _git(repo, "config", "user.name", "audit")
    (repo / "README.md").write_text("nothing to see\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "first")
    return repo


def _audit(repo: Path) -> tuple[int, dict[str, object], str]:
    done = subprocess.run([str(AUDIT), str(repo)], capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stdout + done.stderr
    return done.returncode, json.loads(lines[-1]), done.stderr


@pytest.fixture(scope="module", autouse=True)
def gitleaks_installed() -> None:
    """The first run installs the pinned gitleaks (go install), as `make audit` does."""
    subprocess.run([str(AUDIT), str(ROOT)], capture_output=True, timeout=900)


def test_a_clean_repository_passes(tmp_path: Path) -> None:
    code, report, _ = _audit(_repo(tmp_path))
    assert (code, report["clean"]) == (0, True)
    assert report["history"] == {"commits": 1, "findings": 0}


def test_a_token_committed_then_deleted_is_found_in_the_history(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    token = "ghp_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(36))
    (repo / "config.py").write_text(f'GITHUB_TOKEN = "{token}"\n')
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "oops")
    (repo / "config.py").unlink()
    _git(repo, "commit", "-qam", "removed")
    code, report, stderr = _audit(repo)
    assert code == 1
    assert report["history"] == {"commits": 3, "findings": 1}
    assert token not in stderr  # reported redacted


def test_a_value_of_the_local_env_in_a_tracked_file_is_found(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    password = secrets.token_urlsafe(18)
    (repo / ".gitignore").write_text(".env\n")
    (repo / ".env").write_text(f"FRAUD_REDIS__PASSWORD={password}\n")
    (repo / "notes.txt").write_text(f"redis password is {password[:4]}...\n")  # a prefix is fine
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "notes")
    assert _audit(repo)[0] == 0
    (repo / "notes.txt").write_text(f"redis: {password}\n")
    _git(repo, "commit", "-qam", "leak")
    code, report, stderr = _audit(repo)
    assert code == 1
    assert report["local_secrets_found"] == 1
    assert password not in stderr
