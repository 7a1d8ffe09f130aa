"""Shared test options and fixtures: slow (paper-size or long) tests are opt-in with --runslow; tests run offline.

Shared plain helpers live in support modules (model_support, train_support, train_fakes, eval_fakes, data_support,
workflow_support); no test module imports another."""

import os
import sys
from pathlib import Path

import pytest

from workflow_support import SMALL, project_copy, run_command

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def snakemake_demo(tmp_path_factory):
    """A copy of the project with the small demo (``SMALL`` of tests/workflow_support.py) run to the end under
    Snakemake; shared by the workflow and browser tests. ``ACE_LORA_DEMO=<folder>`` reuses a finished copy instead
    (a local shortcut while working on the report; the workflow tests edit its params.yaml)."""
    if os.environ.get("ACE_LORA_DEMO"):
        return Path(os.environ["ACE_LORA_DEMO"])

    project = project_copy(tmp_path_factory.mktemp("snakemake_demo"), SMALL)
    run_command([sys.executable, "-m", "snakemake", "--cores", "2"], project)
    return project


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread (a 2-thread pool mostly waits on a shared CPU); restored after.
    The training tests use it for every test (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
