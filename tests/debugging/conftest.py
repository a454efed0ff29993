"""Fixtures: the wrong pass is registered only while a test that asks for it runs."""

from __future__ import annotations

import pytest

from compiler.pass_manager import registry
from tests.debugging.models import Crash, FlipSign


@pytest.fixture
def flip_sign(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(registry._REGISTRY, FlipSign.name, FlipSign)
    return FlipSign.name


@pytest.fixture
def crash(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(registry._REGISTRY, Crash.name, Crash)
    return Crash.name
