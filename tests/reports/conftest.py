"""Fixtures for the report tests: sample audits, a shared headless Chromium, the artifact dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _chromium import SKIP_REASON, Chromium, find_chromium

ARTIFACTS = Path(__file__).resolve().parents[1] / "_artifacts" / "reports"


@pytest.fixture(scope="session")
def browser() -> Iterator[Chromium]:
    """One headless Chromium for the session (skips the test when there is none)."""
    if find_chromium() is None:
        pytest.skip(SKIP_REASON)
    with Chromium() as b:
        yield b


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go for people to look at (``tests/_artifacts/``, git-ignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
