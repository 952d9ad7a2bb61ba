"""Fixtures for the zoo tests: a session cache, the VADER sdist fetched once per session, and
one real resnet-digits build shared by the tests that check it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def vader_sdist(tmp_path_factory) -> Path:
    """The vaderSentiment sdist, fetched once per session (needs PyPI; skips without it)."""
    from trt_mpq.errors import TaskError
    from trt_mpq.zoo.datasets import fetch_vader_sdist

    root = tmp_path_factory.mktemp("vader")
    try:
        return fetch_vader_sdist(root)
    except TaskError as e:
        pytest.skip(f"cannot fetch the VADER data: {e}")


@pytest.fixture
def text_cache(tmp_path, vader_sdist) -> Path:
    """A fresh cache dir with the VADER sdist already in its downloads/."""
    (tmp_path / "downloads").mkdir()
    shutil.copy(vader_sdist, tmp_path / "downloads" / vader_sdist.name)
    return tmp_path


@pytest.fixture(scope="session")
def resnet_digits(tmp_path_factory):
    """One real resnet-digits build: (task, cache_dir, build seconds)."""
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from trt_mpq.zoo import digits

    cache = tmp_path_factory.mktemp("zoo-cache")
    t0 = time.perf_counter()
    task = digits.build_resnet(cache, progress=False)
    return task, cache, time.perf_counter() - t0
