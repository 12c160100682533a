"""HTML reports checked in a real browser: headless Chromium opens a page, and we collect what a
reader would meet: console errors, uncaught exceptions, and how many charts actually rendered.

A report can be byte-for-byte plausible (the right number of ``aiopt-vega`` divs, the inlined
bundle) and still show blank boxes: a script that throws, a bundle missing from the page, a spec
vega rejects. Only running the page tells. :func:`check_page` drives Chromium over the DevTools
protocol through ``--remote-debugging-pipe`` (file descriptors 3 and 4, NUL-separated JSON), so
no websocket client and no open port are needed; the standard library is enough.

What is counted (after the load event, once the chart counts stop changing):

- ``vega_charts`` / ``vega_charts_rendered``: ``.aiopt-vega`` divs (written by
  :func:`aiopt_lib.viz.charts.enable_offline_altair`'s renderer) and those holding an ``svg`` or
  ``canvas`` drawn by vega-embed;
- ``plotly_charts`` / ``plotly_charts_rendered``: ``.plotly-graph-div`` divs and those holding
  plotly's ``svg.main-svg``;
- ``images`` / ``images_broken``: ``img`` elements that decoded (natural width > 0) and those that
  did not (e.g. a corrupt ``data:`` URI);
- ``sortable_tables``: tables DataTables (itables) took over: sortable, searchable, paged;
- ``answers``: the answer blocks (``.aiopt-answer``, :func:`aiopt_lib.viz.report.answer`);
- ``shape_rows``: polars ``shape: (`` lines in the visible text (a raw frame; always a problem);
- ``lockbox_mentions``: how often the visible text names the lockbox.

Typical use (the expected counts of the five pipeline reports come from :func:`expected_charts`)::

    check = check_page("reports/<run>/01_data_exploration.html", screenshot="01.png")
    assert check.problems(expected_charts("01_data_exploration")) == []
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiopt_lib.core.atomic import atomic_path
from aiopt_lib.core.errors import ConfigError, DataError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Counts of the elements a page shows, evaluated in the page after it loaded.
_COUNT_SCRIPT = r"""(() => {
  const vega = Array.from(document.querySelectorAll('.aiopt-vega'));
  const plotly = Array.from(document.querySelectorAll('.plotly-graph-div'));
  const imgs = Array.from(document.images);
  return JSON.stringify({
    vega_charts: vega.length,
    vega_charts_rendered: vega.filter(d => d.querySelector('svg, canvas') !== null).length,
    plotly_charts: plotly.length,
    plotly_charts_rendered: plotly.filter(d => d.querySelector('svg.main-svg') !== null).length,
    images: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    images_broken: imgs.filter(i => i.complete && i.naturalWidth === 0).length,
    images_pending: imgs.filter(i => !i.complete).length,
    answers: document.querySelectorAll('.aiopt-answer').length,
    sortable_tables: document.querySelectorAll('table.dataTable').length,
    shape_rows: (document.body.innerText.match(/shape: \(/g) || []).length,
    lockbox_mentions: (document.body.innerText.match(/lockbox/gi) || []).length,
    title: document.title,
  });
})()"""

# The longest screenshot we take: Chromium refuses textures much taller than this.
_MAX_SCREENSHOT_HEIGHT = 16_000

# The five pipeline reports: vega and plotly charts exactly, images at least (an image count can
# grow with the data, e.g. one picture per exported strategy).
_EXPECTED = {
    "01_data_exploration": {
        "vega_charts_rendered": 4,
        "plotly_charts_rendered": 0,
        "images_min": 2,
        "answers_min": 1,
    },
    "02_chart_rendering": {
        "vega_charts_rendered": 0,
        "plotly_charts_rendered": 0,
        "images_min": 3,
        "answers_min": 1,
    },
    "03_multimodal_finetune": {
        "vega_charts_rendered": 2,
        "plotly_charts_rendered": 0,
        "images_min": 0,
        "answers_min": 1,
    },
    "04_optuna_search": {
        "vega_charts_rendered": 5,
        "plotly_charts_rendered": 9,
        "images_min": 1,
        "answers_min": 1,
        "lockbox_mentions_min": 2,
    },
    "05_backtest": {
        "vega_charts_rendered": 1,
        "plotly_charts_rendered": 0,
        "images_min": 0,
        "answers_min": 1,
        "lockbox_mentions_min": 1,
    },
    "06_paper_trading": {
        "vega_charts_rendered": 2,
        "plotly_charts_rendered": 0,
        "images_min": 0,
        "answers_min": 1,
        "lockbox_mentions_min": 1,
    },
    "index": {"answers_min": 1, "lockbox_mentions_min": 2},
}


@dataclass(frozen=True)
class PageCheck:
    """What a headless browser met when it opened one page.

    ``console_errors``: ``console.error`` calls and browser log entries of level error (e.g. a
    resource that failed to load); ``exceptions``: uncaught JavaScript exceptions; ``counts``:
    the elements counted after rendering (see the module docstring); ``screenshot``: the PNG
    written, if one was asked for.
    """

    path: Path
    title: str
    console_errors: tuple[str, ...]
    exceptions: tuple[str, ...]
    counts: Mapping[str, int] = field(default_factory=dict)
    screenshot: Path | None = None

    @property
    def ok(self) -> bool:
        """No console error, no uncaught exception, and every chart on the page rendered."""
        return not self.problems()

    def problems(self, expected: Mapping[str, int] | None = None) -> list[str]:
        """Everything wrong with the page, one sentence each (empty when all is well).

        Always: console errors, exceptions, charts present but not rendered, broken images.
        With ``expected`` (e.g. from :func:`expected_charts`): a key ``name`` must equal
        ``counts[name]``, a key ``name_min`` is a lower bound on ``counts[name]``.
        """
        found = [f"console error: {text}" for text in self.console_errors]
        found += [f"uncaught exception: {text}" for text in self.exceptions]
        counts = self.counts
        for kind in ("vega_charts", "plotly_charts"):
            missing = counts.get(kind, 0) - counts.get(f"{kind}_rendered", 0)
            if missing:
                found.append(f"{missing} of {counts.get(kind, 0)} {kind} did not render")
        if counts.get("shape_rows", 0):
            found.append(f"{counts['shape_rows']} raw polars frame(s) ('shape: (' in the text)")
        if counts.get("images_broken", 0):
            found.append(f"{counts['images_broken']} image(s) failed to decode")
        for key, want in (expected or {}).items():
            if key.endswith("_min"):
                name = key.removesuffix("_min")
                if counts.get(name, 0) < want:
                    found.append(f"{name}: {counts.get(name, 0)}, expected at least {want}")
            elif counts.get(key, 0) != want:
                found.append(f"{key}: {counts.get(key, 0)}, expected {want}")
        return found


def expected_charts(report_name: str | Path) -> dict[str, int]:
    """What a report of the default pipeline should show once rendered.

    ``report_name``: ``"01"``, ``"01_data_exploration"`` or a path to ``01_data_exploration.html``.
    Keys as in :attr:`PageCheck.counts`, exact; a ``_min`` suffix means at least (see
    :meth:`PageCheck.problems`). Raises :class:`ConfigError` for a report that is not one of 01-06.
    """
    stem = Path(str(report_name)).stem
    for name, expected in _EXPECTED.items():
        if stem == name or stem == name[:2]:
            return dict(expected)
    raise ConfigError(f"no expected charts for report {report_name!r}; known: {sorted(_EXPECTED)}")


def find_chromium() -> Path | None:
    """The Chromium (or Chrome) executable: ``$AIOPT_CHROMIUM`` if set, else the first of
    ``chromium``, ``chromium-browser``, ``google-chrome``, ``google-chrome-stable`` on ``PATH``;
    ``None`` when there is none."""
    explicit = os.environ.get("AIOPT_CHROMIUM")
    if explicit:
        return Path(explicit) if os.access(explicit, os.X_OK) else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def apt_install(package: str, *, timeout: float = 900) -> bool:
    """``apt-get install -y --no-install-recommends PACKAGE`` (``apt-get update`` first when
    the package lists are stale), when we run as root with ``apt-get``: how the tests get the
    real servers and browser a bare Debian machine lacks. True when the install succeeded."""
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "--no-install-recommends", package]
    for command in (install, [apt, "update"], install):
        try:
            done = subprocess.run(command, capture_output=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return False
        if command is install and done.returncode == 0:
            return True
    return False


def ensure_chromium(*, timeout: float = 900) -> Path | None:
    """:func:`find_chromium`, installing Debian's ``chromium`` package with ``apt-get`` first when
    there is none and we run as root with ``apt-get`` available (``apt-get update`` is tried once
    if the package lists are stale). ``None`` when Chromium is still missing afterwards."""
    found = find_chromium()
    if found is not None or os.environ.get("AIOPT_CHROMIUM"):
        return found
    apt_install("chromium", timeout=timeout)
    return find_chromium()


class _Browser:
    """One headless Chromium process spoken to over ``--remote-debugging-pipe``."""

    def __init__(self, executable: Path, profile: Path, *, width: int, height: int) -> None:
        # Chromium reads commands on fd 3 and writes replies on fd 4. The pipe ends are first
        # moved to fds >= 10 so the dup2 onto 3 and 4 in the child cannot overwrite one another.
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        child_in = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_child_r)
        os.close(from_child_w)
        self._write_fd, self._read_fd = to_child_w, from_child_r
        self.log_path = profile / "chromium.log"
        argv = [
            str(executable),
            "--headless",
            "--no-sandbox",  # containers (and root) have no user namespaces for the sandbox
            "--disable-gpu",
            "--disable-dev-shm-usage",  # small /dev/shm in containers crashes renderers
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--hide-scrollbars",
            "--mute-audio",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(self.log_path), os.O_WRONLY | os.O_CREAT, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
            (os.POSIX_SPAWN_DUP2, child_in, 3),
            (os.POSIX_SPAWN_DUP2, child_out, 4),
        ]
        try:
            # setpgroup=0: the browser leads its own process group, so closing it also ends the
            # zygote and renderer processes it started.
            self.pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions, setpgroup=0)
        except OSError:
            os.close(to_child_w)
            os.close(from_child_r)
            raise
        finally:
            os.close(child_in)
            os.close(child_out)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """Send one command and wait for its reply; events met meanwhile are kept in ``events``."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._write_fd, data) :]
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply is None:
                raise TimeoutError(f"Chromium did not answer {method} within {timeout:g} s")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"Chromium refused {method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def pump(self, seconds: float) -> None:
        """Collect events for up to ``seconds``."""
        deadline = time.monotonic() + seconds
        while (message := self._receive(deadline)) is not None:
            if "method" in message:
                self.events.append(message)

    def _receive(self, deadline: float) -> dict[str, Any] | None:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._read_fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(self._read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited; its log: {self._log_tail()}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close", timeout=5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        # Renderers outlive a killed browser for a moment; end what is left of its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        os.close(self._write_fd)
        os.close(self._read_fd)


@contextlib.contextmanager
def _browser(executable: Path, *, width: int, height: int) -> Iterator[_Browser]:
    with tempfile.TemporaryDirectory(prefix="aiopt-chromium-") as profile:
        browser = _Browser(executable, Path(profile), width=width, height=height)
        try:
            yield browser
        finally:
            browser.close()


def _remote_text(obj: Mapping[str, Any]) -> str:
    """A console argument or thrown value as the DevTools console would print it."""
    if "value" in obj:
        value = obj["value"]
        return value if isinstance(value, str) else json.dumps(value)
    return str(obj.get("description") or obj.get("unserializableValue") or obj.get("type", ""))


def _messages(events: list[dict[str, Any]], session: str) -> tuple[list[str], list[str]]:
    errors: list[str] = []
    exceptions: list[str] = []
    for event in events:
        if event.get("sessionId") != session:
            continue
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(" ".join(_remote_text(a) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            where = f" ({entry['url']})" if entry.get("url") else ""
            errors.append(f"{entry.get('text', '')}{where}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            thrown = details.get("exception")
            text = _remote_text(thrown) if thrown else details.get("text", "")
            line = details.get("lineNumber")
            exceptions.append(f"{text} (line {line + 1})" if line is not None else text)
    return errors, exceptions


def _png_size(png: bytes) -> tuple[int, int]:
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def check_page(
    path: str | Path,
    *,
    screenshot: str | Path | None = None,
    timeout: float = 60,
    settle: float = 1.0,
    width: int = 1200,
    height: int = 900,
    chromium: str | Path | None = None,
) -> PageCheck:
    """Open a local HTML page in headless Chromium and report what a reader would meet.

    Waits for the load event, then polls the element counts until every vega/plotly chart has
    rendered and no image is still loading, or until the counts have not changed for ``settle``
    seconds (a chart that never renders is reported, not waited for); errors logged up to then
    are collected. With ``screenshot``, the whole page (up to 16,000 CSS pixels tall) at
    ``width`` pixels is written there as a PNG. ``chromium``: the executable (default
    :func:`find_chromium`).

    Raises :class:`DataError` when the page does not exist, :class:`ConfigError` when no Chromium
    is found, :class:`TimeoutError` when the page does not load within ``timeout`` seconds.
    """
    page = Path(path).resolve()
    if not page.is_file():
        raise DataError("page not found", file=str(page))
    executable = Path(chromium) if chromium is not None else find_chromium()
    if executable is None:
        raise ConfigError(
            "no Chromium found: install Debian's 'chromium' package (see ensure_chromium) or set "
            "AIOPT_CHROMIUM to a Chrome/Chromium executable"
        )
    deadline = time.monotonic() + timeout
    with _browser(executable, width=width, height=height) as browser:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            browser.send(domain, session=session)
        browser.send("Page.navigate", {"url": page.as_uri()}, session=session, timeout=timeout)
        while not any(
            e.get("sessionId") == session and e["method"] == "Page.loadEventFired"
            for e in browser.events
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{page} did not finish loading within {timeout:g} s")
            browser.pump(min(0.25, max(0.0, deadline - time.monotonic())))

        def evaluate_counts() -> dict[str, Any]:
            result = browser.send(
                "Runtime.evaluate",
                {"expression": _COUNT_SCRIPT, "returnByValue": True},
                session=session,
            )
            return json.loads(result["result"]["value"])

        counts = evaluate_counts()
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            done = (
                counts["vega_charts"] == counts["vega_charts_rendered"]
                and counts["plotly_charts"] == counts["plotly_charts_rendered"]
                and counts["images_pending"] == 0
            )
            if done or time.monotonic() - stable_since >= settle:
                break
            browser.pump(0.1)
            latest = evaluate_counts()
            if latest != counts:
                counts, stable_since = latest, time.monotonic()
        # A short grace period: vega-embed reports a rejected spec from a promise after drawing.
        browser.pump(0.2)
        written = None
        if screenshot is not None:
            written = _screenshot(browser, session, Path(screenshot), width)
        errors, exceptions = _messages(browser.events, session)
    title = str(counts.pop("title", ""))
    counts.pop("images_pending", None)
    return PageCheck(
        path=page,
        title=title,
        console_errors=tuple(errors),
        exceptions=tuple(exceptions),
        counts={k: int(v) for k, v in counts.items()},
        screenshot=written,
    )


def _screenshot(browser: _Browser, session: str, out: Path, width: int) -> Path:
    metrics = browser.send("Page.getLayoutMetrics", session=session)
    content = metrics.get("cssContentSize") or metrics["contentSize"]
    page_height = max(1, min(int(content["height"]), _MAX_SCREENSHOT_HEIGHT))
    shot = browser.send(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": page_height, "scale": 1},
        },
        session=session,
        timeout=60,
    )
    png = base64.b64decode(shot["data"])
    if not re.match(rb"\x89PNG\r\n\x1a\n", png) or min(_png_size(png)) <= 0:
        raise RuntimeError("Chromium returned no PNG screenshot")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_bytes(png)
    return out
