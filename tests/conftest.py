"""Shared test configuration: GPU / optional-library markers skip with a visible reason."""
import importlib.util

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    has = {
        "gpu": torch.cuda.is_available(),
        "dali": importlib.util.find_spec("nvidia.dali") is not None,
        "ffcv": importlib.util.find_spec("ffcv") is not None,
        "slow": config.getoption("--runslow"),
    }
    why = {"gpu": "no CUDA GPU on this machine", "dali": "nvidia-dali is not installed",
           "ffcv": "ffcv is not installed", "slow": "slow test: pass --runslow"}
    for item in items:
        for mark, ok in has.items():
            # the marker itself, not a keyword: a folder named gpu/ must not skip its tests
            if item.get_closest_marker(mark) is not None and not ok:
                item.add_marker(pytest.mark.skip(reason=why[mark]))
