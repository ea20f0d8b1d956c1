"""Shared fixtures: the real Fashion-MNIST (loaded once per session) and the devices to test on.

    .venv/bin/pytest -q                        # everything (make test)
    .venv/bin/pytest -q tests/test_training.py # one file
"""

from __future__ import annotations

import pytest
import torch

from bench.studies.training import data


@pytest.fixture(scope="session")
def fashion() -> data.FashionMNIST:
    """The real dataset, from wherever bench.studies.training.data finds it (no download: tests must not need
    the network)."""
    return data.load(download=False)


def devices_under_test() -> list[torch.device]:
    """CPU always; the first GPU too when this machine has one."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda", 0))
    return devices


@pytest.fixture(params=[pytest.param(d, marks=[pytest.mark.cuda] if d.type == "cuda" else [], id=str(d))
                        for d in devices_under_test()])
def device(request: pytest.FixtureRequest) -> torch.device:
    """Each test taking `device` runs on the CPU and, where there is one, the GPU; the GPU instances carry
    the `cuda` marker, so `pytest -m cuda` selects exactly what needs a GPU."""
    return request.param


# Misbehaving plugins (a real installed distribution): `def test_x(misbehaving): ...`
from plugin_fixtures import misbehaving  # noqa: E402,F401
