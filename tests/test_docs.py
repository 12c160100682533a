"""The API site of ``make docs``: it builds with ``mkdocs build --strict`` (any warning, e.g. a
docstring griffe cannot parse or a broken link, fails), has the pages the README points to, and
works offline: no page loads a font, stylesheet or script from the network, and the search runs
from ``file://`` (checked in headless Chromium when one is installed)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("core", "data", "features", "models", "strategy", "execution", "pine", "viz", "runs")
REMOTE = re.compile(r"^(?:https?:)?//", re.IGNORECASE)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


class _Resources(HTMLParser):
    """What a page loads by itself: scripts, stylesheets and other ``link``s, images, frames."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in ("script", "img", "iframe", "source") and values.get("src"):
            self.loaded.append(values["src"] or "")
        elif tag == "link" and values.get("href"):
            self.loaded.append(values["href"] or "")
        self._in_style = tag == "style"
        if values.get("style"):
            self.styles.append(values["style"] or "")

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def _css_urls(css: str) -> list[str]:
    urls = re.findall(r"url\(\s*['\"]?([^'\")]+)", css)
    urls += re.findall(r"@import\s+['\"]([^'\"]+)", css)
    return [u for u in urls if not u.startswith("data:")]


def test_pages_exist(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert "Where a change goes" in (site / "architecture.html").read_text(encoding="utf-8")
    for stage in STAGES:
        assert (site / "api" / f"{stage}.html").is_file(), stage
    strategy = (site / "api" / "strategy.html").read_text(encoding="utf-8")
    assert 'id="aiopt_lib.strategy.spec.StrategySpec"' in strategy
    models = (site / "api" / "models.html").read_text(encoding="utf-8")
    assert 'id="aiopt_lib.models.load_model"' in models
    # the docstrings' Sphinx roles became links, not ":func:" text
    assert ":func:" not in strategy
    assert 'class="autorefs autorefs-internal"' in strategy


def test_nothing_is_loaded_from_the_network(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > len(STAGES)
    remote: list[str] = []
    for page in pages:
        parser = _Resources()
        parser.feed(page.read_text(encoding="utf-8"))
        urls = parser.loaded + [u for css in parser.styles for u in _css_urls(css)]
        remote += [f"{page.relative_to(site)}: {url}" for url in urls if REMOTE.match(url)]
    for sheet in sorted(site.rglob("*.css")):
        css = sheet.read_text(encoding="utf-8")
        remote += [f"{sheet.relative_to(site)}: {u}" for u in _css_urls(css) if REMOTE.match(u)]
    assert remote == []
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis" not in index
    assert "unpkg.com" not in index
    assert "iframe-worker-offline.js" in index
    # the offline plugin's inlined index, which the search reads from file://
    assert (site / "search" / "search_index.js").is_file()


def test_search_works_from_disk(site: Path) -> None:
    from browser_check import _browser, _messages, find_chromium

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium: install Debian's 'chromium' package or set AIOPT_CHROMIUM")
    page = site / "api" / "strategy.html"
    search = """
    (async () => {
      const input = document.querySelector('[data-md-component=search-query]');
      input.focus();
      input.value = 'StrategySpec';
      input.dispatchEvent(new Event('input', {bubbles: true}));
      input.dispatchEvent(new KeyboardEvent('keyup', {bubbles: true, key: 'c'}));
      for (let i = 0; i < 100; i++) {
        await new Promise(resolve => setTimeout(resolve, 100));
        const found = document.querySelectorAll('.md-search-result__item').length;
        if (found) return JSON.stringify({found});
      }
      return JSON.stringify({found: 0});
    })()
    """
    with _browser(chromium, width=1200, height=900) as browser:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable", "Network.enable"):
            browser.send(domain, session=session)
        browser.send("Page.navigate", {"url": page.as_uri()}, session=session, timeout=60)
        deadline = time.monotonic() + 60
        while not any(
            event.get("sessionId") == session and event["method"] == "Page.loadEventFired"
            for event in browser.events
        ):
            assert time.monotonic() < deadline, f"{page} did not load within 60 s"
            browser.pump(0.25)
        result = browser.send(
            "Runtime.evaluate",
            {"expression": search, "awaitPromise": True, "returnByValue": True},
            session=session,
            timeout=30,
        )
        errors, exceptions = _messages(browser.events, session)
        requested = [
            event["params"]["request"]["url"]
            for event in browser.events
            if event.get("sessionId") == session and event["method"] == "Network.requestWillBeSent"
        ]
    assert json.loads(result["result"]["value"])["found"] > 0
    assert errors == []
    assert exceptions == []
    assert [url for url in requested if not url.startswith(("file:", "data:"))] == []
