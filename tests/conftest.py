"""Shared pytest configuration: the gpu marker skips cleanly without CUDA, slow sweeps run only with
-m slow, and xdist workers run torch with one intra-op thread each."""

import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    # pyproject: "slow: long sweeps, not in the default run (select with -m slow)"
    if "slow" not in (config.getoption("markexpr", "") or ""):
        skip_slow = pytest.mark.skip(reason="slow sweep: select with -m slow")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip_slow)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_xdist_worker():
    """Under pytest-xdist (-n auto) there is already one worker per core; torch's own intra-op
    threads on top of that spin against each other and made the tiny test shapes several times
    slower on the 2-core CI machine. Restored at the end of the session."""
    if "PYTEST_XDIST_WORKER" not in os.environ or os.environ.get("OMP_NUM_THREADS"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
