"""Shared fixtures: the real raw files in ../shared/fixtures (tests skip where that folder is absent)."""
from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def fixture_path(name: str) -> Path:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"raw fixture {name} not found in {FIXTURES} (clone beside ../shared to run it)")
    return path


@pytest.fixture
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"no raw fixtures folder at {FIXTURES}")
    return FIXTURES
