"""Progress off a terminal: log lines (what a Snakemake/DVC log shows), nothing lost from the iterable."""

import logging

from ace_lora.progress import progress


def test_progress_logs_lines_off_a_terminal(caplog, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    with caplog.at_level(logging.INFO, logger="ace_lora"):
        items = list(progress(range(5), "prepare demo", unit="img", seconds=0.0))
    assert items == list(range(5))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("prepare demo: 1/5 img (") and lines[-1].startswith("prepare demo: 5/5 img (")
    assert "\r" not in "".join(lines)


def test_progress_is_quiet_within_its_interval(caplog, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    with caplog.at_level(logging.INFO, logger="ace_lora"):
        assert sum(progress(iter(range(100)), "x", seconds=3600)) == 4950
    assert not caplog.records
