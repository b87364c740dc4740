"""Packaging: pyproject.toml declares what the code imports, in ranges that admit requirements.txt's pins."""
from __future__ import annotations

import ast
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
from packaging.requirements import Requirement  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pins() -> dict[str, str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    found = [line.split("==") for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(name): version.strip() for name, version in found}


def declared() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in project()["dependencies"]]
    reqs += [Requirement(r) for extra in project()["optional-dependencies"].values() for r in extra]
    return {canonicalize_name(r.name): r for r in reqs}


def test_every_pin_is_admitted_by_the_declared_range():
    reqs, pinned = declared(), pins()
    for name, version in pinned.items():
        assert name in reqs, f"requirements.txt pins {name}, which pyproject.toml does not declare"
        assert reqs[name].specifier.contains(version, prereleases=True), \
            f"{name}=={version} is outside pyproject.toml's {reqs[name].specifier}"
    for req in project()["dependencies"]:
        assert canonicalize_name(Requirement(req).name) in pinned, f"runtime dependency {req} is not pinned"


def imported_top_level_names() -> set[str]:
    names = set()
    for path in (ROOT / "src" / "batman").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"batman"}


def test_every_imported_package_is_declared():
    dists = packages_distributions()
    reqs = declared()
    names = imported_top_level_names()
    assert {"torch", "numpy", "rawpy", "imagecodecs"} <= names
    for name in sorted(names & set(dists)):  # an optional package missing here has no known distribution
        assert any(canonicalize_name(d) in reqs for d in dists[name]), \
            f"src imports {name} ({dists[name]}), which pyproject.toml does not declare"


def test_version_is_the_package_attribute():
    import batman
    assert project()["dynamic"] == ["version"] and batman.__version__
