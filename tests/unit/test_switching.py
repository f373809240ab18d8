"""The thread switch interval of service processes (innosystem/kit/switching.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from innosystem.kit import switching


@pytest.fixture
def restored() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_settle_shortens_the_interval(restored: None) -> None:
    sys.setswitchinterval(0.005)
    switching.settle()
    assert sys.getswitchinterval() == pytest.approx(switching.INTERVAL_MS / 1000)


def test_the_setting_chooses_it(restored: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INNOSYSTEM_SWITCH_INTERVAL_MS", "2")
    switching.settle()
    assert sys.getswitchinterval() == pytest.approx(0.002)


def test_zero_keeps_the_interpreters_interval(restored: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INNOSYSTEM_SWITCH_INTERVAL_MS", "0")
    sys.setswitchinterval(0.005)
    switching.settle()
    assert sys.getswitchinterval() == pytest.approx(0.005)
