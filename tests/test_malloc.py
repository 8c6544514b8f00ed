"""nerfcodec_ns.malloc: which allocator settings are applied, and when none are (no timings here)."""

from __future__ import annotations

import pytest

from nerfcodec_ns import malloc


class FakeLibc:
    def __init__(self, result: int = 1):
        self.calls = []
        self.result = result

    def mallopt(self, param, value):
        self.calls.append((param.value, value.value))
        return self.result


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(malloc, "_applied", None)
    monkeypatch.delenv(malloc.ENV, raising=False)
    monkeypatch.setattr(malloc, "_address_space_limited", lambda: False)


def test_tune_malloc_sets_mmap_off_and_keeps_the_heap():
    libc = FakeLibc()
    assert malloc.tune_malloc(libc) is True
    assert dict(libc.calls) == {malloc.M_MMAP_MAX: 0, malloc.M_TRIM_THRESHOLD: 2**31 - 1}


def test_tune_malloc_reports_a_refused_setting():
    assert malloc.tune_malloc(FakeLibc(result=0)) is False


def test_env_default_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv(malloc.ENV, "default")
    libc = FakeLibc()
    assert malloc.tune_malloc(libc) is False
    assert libc.calls == []


def test_no_tuning_under_an_address_space_limit(monkeypatch):
    monkeypatch.setattr(malloc, "_address_space_limited", lambda: True)
    libc = FakeLibc()
    assert malloc.tune_malloc(libc) is False
    assert libc.calls == []


def test_without_glibc_nothing_is_applied(monkeypatch):
    monkeypatch.setattr(malloc, "_glibc", lambda: None)
    assert malloc.tune_malloc() is False


def test_the_real_call_is_remembered(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(malloc, "_glibc", lambda: libc)
    first = malloc.tune_malloc()
    assert first is True and len(libc.calls) == 2
    assert malloc.tune_malloc() is True and len(libc.calls) == 2  # once per process
