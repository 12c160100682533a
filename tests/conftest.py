"""Shared fixtures. Test data lives in tests/data (copied from the project's shared data with its
licences); tests never read ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def dukascopy_dir() -> Path:
    """The Dukascopy datafeed fixture files, laid out as on the datafeed (month 0-based)."""
    return DATA_DIR / "dukascopy"


@pytest.fixture(scope="session")
def eurusd_h1_csv() -> Path:
    return DATA_DIR / "eurusd_h1" / "EURUSD_1H_ASK_2017.csv"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matrices: thread hand-offs cost more than the arithmetic (and other suites run too).
    Modules of tiny-model tests use it with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
