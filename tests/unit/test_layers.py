"""The dependency rule, checked on the source: core <- components <- application.

Every import counts, at module level or inside a function: a lazy import is still a
dependency. ``fraudcore`` imports no component; components import neither the application
nor each other's serving side where the architecture says so; nothing imports the tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = "fraudcore"
COMPONENTS = (
    "fraud_producers",
    "fraud_features",
    "fraud_pipelines",
    "fraud_predictor",
    "fraud_transformer",
    "fraud_monitor",
    "fraud_console",
)
APP = "fraud_app"
# Where each importable package's sources live (plus the Feast repo, which Feast imports).
SOURCES = {
    CORE: [ROOT / "fraudcore"],
    "fraud_producers": [ROOT / "producers"],
    "fraud_features": [ROOT / "feature_store"],
    "fraud_pipelines": [ROOT / "pipelines"],
    "fraud_predictor": [ROOT / "predictors"],
    "fraud_transformer": [ROOT / "transformers"],
    "fraud_monitor": [ROOT / "monitoring"],
    "fraud_console": [ROOT / "console"],
    APP: [ROOT / "app"],
}
# (importer, imported) pairs the architecture forbids beyond the layer order.
FORBIDDEN_PAIRS = {
    ("fraud_predictor", "fraud_features"),
    ("fraud_predictor", "fraud_transformer"),
    ("fraud_producers", "fraud_predictor"),
    ("fraud_producers", "fraud_transformer"),
    # The review console reads what the platform publishes (topics, metrics, the online
    # store) through the core alone.
    *(("fraud_console", other) for other in COMPONENTS if other != "fraud_console"),
}


def imported_packages(source: str) -> set[str]:
    """Top-level names of everything a module imports, wherever the import statement is."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def violations(package: str, imported: set[str]) -> list[str]:
    """Why each of ``imported`` breaks the rule for a module of ``package`` (empty: none)."""
    found = []
    if "tests" in imported:
        found.append("imports the tests")
    if package == CORE:
        found += [f"core imports {name}" for name in sorted(imported & {*COMPONENTS, APP})]
    elif package in COMPONENTS:
        if APP in imported:
            found.append(f"component {package} imports the application")
        found += [
            f"{package} imports {name}" for name in sorted(imported) if (package, name) in FORBIDDEN_PAIRS
        ]
    return found


def _modules() -> list[tuple[str, Path]]:
    return [
        (package, path)
        for package, folders in SOURCES.items()
        for folder in folders
        for path in sorted(folder.rglob("*.py"))
    ]


def test_every_package_has_sources() -> None:
    for package, folders in SOURCES.items():
        assert any(folder.is_dir() and any(folder.rglob("*.py")) for folder in folders), package


@pytest.mark.parametrize(
    ("package", "path"), _modules(), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v
)
def test_imports_follow_the_layers(package: str, path: Path) -> None:
    assert violations(package, imported_packages(path.read_text())) == []


@pytest.mark.parametrize(
    ("package", "source", "expected"),
    [
        (CORE, "def f():\n    from fraud_producers.modes import seed\n", ["core imports fraud_producers"]),
        (CORE, "import fraud_app.cli\n", ["core imports fraud_app"]),
        (
            "fraud_predictor",
            "from fraud_transformer import model\n",
            ["fraud_predictor imports fraud_transformer"],
        ),
        ("fraud_producers", "from fraud_features.store import apply\n", []),
        (
            "fraud_console",
            "from fraud_features.store import repo_config\n",
            ["fraud_console imports fraud_features"],
        ),
        ("fraud_console", "from fraudcore.events import validate\n", []),
        (
            "fraud_pipelines",
            "from fraud_app.demo import run\n",
            ["component fraud_pipelines imports the application"],
        ),
        (APP, "from tests.helpers import isolated\n", ["imports the tests"]),
        (APP, "from fraud_producers.cli import app\nfrom fraudcore import kafka\n", []),
    ],
)
def test_the_rule_catches_what_it_should(package: str, source: str, expected: list[str]) -> None:
    assert violations(package, imported_packages(source)) == expected
