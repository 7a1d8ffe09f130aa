"""The results page in a real browser: `snakemake --report` of the small demo, opened in headless Chromium.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``; no extra Python package):
the test opens each section of the report the way a reader's click does, then reads the page back — table cells
in the benchmark table, images decoded with a natural size — and saves a screenshot of each view under
``$ACE_LORA_SCREENSHOTS`` (default: the test's tmp folder) for a person to look at.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (Debian: apt-get install -y chromium); "
    "CI installs it, so this skip only happens on a machine without it",
)


class Browser:
    """Headless Chromium and one page, over the DevTools protocol (JSON messages separated by NUL on fds 3/4)."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000):
        to_browser, self._browser_in = os.pipe()
        self._browser_out, from_browser = os.pipe()

        def wire():  # in the child: fd 3 reads our commands, fd 4 writes the replies
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-pipe",
                "--no-first-run",
                "--disable-features=site-per-process,IsolateOrigins",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
            ],
            preexec_fn=wire,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next_id, self.events = b"", 0, []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Page.enable", session=True)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            session=True,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def _read(self, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            if time.monotonic() > end or self.proc.poll() is not None:
                raise TimeoutError("no answer from Chromium")
            self._buffer += os.read(self._browser_out, 1 << 20)
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: bool = False, timeout: float = 60, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._browser_in, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def open(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", session=True, url=url)
        end = time.monotonic() + 60
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            assert time.monotonic() < end, f"{url}: page did not load"
            self.events.append(self._read(60))

    def js(self, expression: str, context: int | None = None):
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        if context is not None:
            params["contextId"] = context
        result = self.send("Runtime.evaluate", session=True, **params)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def frame_context(self, index: int = 0) -> int:
        """An execution context inside the page's ``index``-th child frame (the report shows HTML in an iframe)."""
        tree = self.send("Page.getFrameTree", session=True)["frameTree"]
        frame = tree["childFrames"][index]["frame"]["id"]
        return self.send("Page.createIsolatedWorld", session=True, frameId=frame)["executionContextId"]

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for fd in (self._browser_in, self._browser_out):
            os.close(fd)


def _settle(browser: Browser, condition: str, timeout: float = 20):
    """Wait until the JavaScript ``condition`` is truthy (React renders asynchronously); return its value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = browser.js(condition)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {condition}")


@pytest.fixture(scope="module")
def report_page(snakemake_demo, tmp_path_factory):
    html = snakemake_demo / "report.html"
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--report", str(html)],
        cwd=snakemake_demo,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    shots = Path(os.environ.get("ACE_LORA_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    browser = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        browser.open(html.as_uri())
        _settle(browser, "typeof app !== 'undefined' && typeof results === 'object'")
        yield browser, shots
    finally:
        browser.close()


_IMAGES = """(async () => {
  const imgs = [...document.querySelectorAll('img')];
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  return imgs.map(i => [i.naturalWidth, i.naturalHeight, i.src.slice(0, 15)]);
})()"""


def _results(browser: Browser, category: str) -> list[str]:
    """Result paths of one category, in the report's data (what the navbar lists)."""
    return browser.js(f"Object.values(categories[{json.dumps(category)}] || {{}}).flat().sort()")


def _show(browser: Browser, path: str, kind: str) -> None:
    """What clicking a result's eye button does: show it in the content pane."""
    browser.js(
        f"app.setView({{content: {json.dumps(kind)}, contentPath: results[{json.dumps(path)}].data_uri, "
        f"resultPath: {json.dumps(path)}}})"
    )


def test_landing_page_describes_the_workflow(report_page):
    browser, shots = report_page
    browser.js("app.setView({content: 'rulegraph', navbarMode: 'menu'})")
    text = _settle(browser, "document.body.innerText.includes('How to read the results') && document.body.innerText")
    assert "Benchmark tables" in text and "Grounding overlays" in text
    categories = browser.js("Object.keys(categories).sort()")
    assert categories == [
        "1. Benchmark tables",
        "2. Benchmark charts",
        "3. ROC curves",
        "4. Confusion matrices",
        "5. Training",
        "6. Grounding overlays",
    ]
    browser.screenshot(shots / "0_landing.png")


def test_benchmark_table_is_rendered(report_page):
    browser, shots = report_page
    (table,) = [p for p in _results(browser, "1. Benchmark tables") if p.endswith(".html")]
    _show(browser, table, "html")
    _settle(browser, "document.querySelector('iframe') !== null")
    time.sleep(1)
    frame = browser.frame_context()
    cells = browser.js("[...document.querySelectorAll('td')].map(td => td.innerText)", context=frame)
    headers = browser.js("[...document.querySelectorAll('th')].map(th => th.innerText)", context=frame)
    assert browser.js("document.querySelectorAll('table').length", context=frame) == 3
    for method in ("base", "lora_only", "ace_lora", "ace_lora_fixed"):
        assert method in cells
    assert "chexpert5x200 ACC" in headers and "zero-shot grounding" in headers
    numbers = [c for c in cells if c[:1].isdigit()]
    assert len(numbers) >= 20 and any("[" in c for c in numbers)  # values with their 95 % intervals
    assert "49.80" in cells  # the paper's value
    browser.screenshot(shots / "1_table.png")


@pytest.mark.parametrize(
    "category, least",
    [
        ("2. Benchmark charts", 6),
        ("3. ROC curves", 6),
        ("4. Confusion matrices", 4),
        ("5. Training", 1),
        ("6. Grounding overlays", 8),
    ],
)
def test_figures_load_in_the_page(report_page, category, least):
    browser, shots = report_page
    paths = _results(browser, category)
    assert len(paths) >= least, paths
    for k, path in enumerate(paths):
        _show(browser, path, "img")
        _settle(browser, "document.querySelector('img[src^=\"data:image/png\"]') !== null")
        sizes = [s for s in browser.js(_IMAGES) if s[2].startswith("data:image/png")]
        assert len(sizes) == 1 and sizes[0][0] > 200 and sizes[0][1] > 150, (path, sizes)
        if k == 0:
            browser.screenshot(shots / f"{category.split('.')[0]}_{Path(path).stem}.png")
