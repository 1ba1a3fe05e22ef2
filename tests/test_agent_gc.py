"""The agent process freezes what start-up made and collects the young generation less often
(``common.gc_tuning.tune_gc``), unless TANVRIT_GC=default."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from common.gc_tuning import GC_THRESHOLDS, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_start_up_objects_are_frozen_and_young_collections_rarer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TANVRIT_GC", raising=False)
    gc.unfreeze()
    tune_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == GC_THRESHOLDS


@pytest.mark.usefixtures("restored_gc")
def test_tanvrit_gc_default_keeps_the_interpreters_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANVRIT_GC", "default")
    gc.unfreeze()
    before = gc.get_threshold()
    tune_gc()
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before
