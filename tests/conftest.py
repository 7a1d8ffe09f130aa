"""Shared test options: slow (paper-size or long) tests are opt-in with --runslow; tests run offline."""

import os

import pytest

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
    """A copy of the project with the small demo (tests/test_workflow.py ``SMALL``) run to the end under Snakemake;
    shared by the workflow and browser tests. ``ACE_LORA_DEMO=<folder>`` reuses a finished copy instead (a local
    shortcut while working on the report; the workflow tests edit its params.yaml)."""
    import sys
    from pathlib import Path

    from test_workflow import SMALL, _project_copy, _run

    if os.environ.get("ACE_LORA_DEMO"):
        return Path(os.environ["ACE_LORA_DEMO"])

    project = _project_copy(tmp_path_factory.mktemp("snakemake_demo"), SMALL)
    _run([sys.executable, "-m", "snakemake", "--cores", "2"], project)
    return project
