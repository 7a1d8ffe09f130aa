"""Progress of long loops: a tqdm bar on a terminal, plain log lines elsewhere.

Under Snakemake and DVC a stage's stderr is a log file, where a bar writes carriage returns and tqdm's own
non-terminal mode writes nothing; :func:`progress` logs ``desc: done/total unit (elapsed)`` every ``seconds`` there
instead, so a long stage's log shows it is moving.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger("ace_lora")
T = TypeVar("T")


def progress(
    iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it", seconds: float = 30.0
) -> Iterator[T]:
    """Yield from ``iterable``, showing progress: a transient bar on a terminal, else a log line every ``seconds``."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        yield from tqdm(iterable, desc=desc, total=total, unit=unit, leave=False)
        return
    start = last = time.monotonic()
    for done, item in enumerate(iterable, 1):
        yield item
        now = time.monotonic()
        if now - last >= seconds:
            last = now
            log.info("%s: %d%s %s (%.0f s)", desc, done, f"/{total}" if total else "", unit, now - start)
