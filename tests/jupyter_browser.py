"""JupyterLab driven by headless Chromium, for tests and benchmarks of live widgets.

A widget panel can pass every Python test and still be dead in the browser: a script that never
runs in an output area, a chart that does not redraw, a slider that does not reach the kernel.
Only a real JupyterLab tells. This harness starts one, offline and isolated, and opens a notebook
in Chromium through Playwright::

    with jupyter_lab(tmp_path) as lab, chromium_page() as page:
        write_notebook(tmp_path / "panel.ipynb", ["import aiopt_lib as ai", "ai.load_sample()"])
        open_notebook(page, lab, "panel.ipynb")
        run_all_cells(page, timeout=60)
        assert cell_errors(page) == []

The server runs from this interpreter's environment on a free ``127.0.0.1`` port with a random
token, in its own process group, with its own config, runtime, settings and workspace folders
(nothing of ``~/.jupyter`` is read or written), and with every feature that would reach the network
off: news and update checks, the PyPI extension manager. It is ended by its pid at teardown (its
kernels first, through the REST API). ``window.jupyterapp`` is exposed so a test can run
JupyterLab commands and read the notebook model instead of clicking through menus.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from browser_check import ensure_chromium

from aiopt_lib.core.net import free_port

CHROMIUM_ARGS = (
    "--no-sandbox",  # containers (and root) have no user namespaces for the sandbox
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)

# JupyterLab settings that would otherwise fetch news or check for updates on the network.
_USER_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}
# Front-end plugins a test has no use for; the extension manager would query PyPI.
_DISABLED_EXTENSIONS = {
    "@jupyterlab/extensionmanager-extension": True,
    "@jupyterlab/apputils-extension:announcements": True,
}


@dataclass(frozen=True)
class LabServer:
    """A running JupyterLab: ``url`` (``http://127.0.0.1:<port>``), ``token``, ``root`` (the
    folder it serves), ``pid`` (its process group leader) and ``log`` (its stdout and stderr)."""

    url: str
    token: str
    root: Path
    pid: int
    log: Path

    def notebook_url(self, name: str) -> str:
        """The address that opens notebook ``name`` (relative to ``root``) in a fresh layout."""
        return f"{self.url}/lab/tree/{name}?token={self.token}&reset"

    def api(self, path: str, *, method: str = "GET", timeout: float = 10) -> Any:
        """One call of the server's REST API (``path`` like ``/api/kernels``); the decoded JSON
        reply, or None for an empty one."""
        request = urllib.request.Request(
            f"{self.url}{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            body = reply.read()
        return json.loads(body) if body else None

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log, for failure messages."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _write_settings(home: Path) -> dict[str, Path]:
    folders = {
        name: home / name for name in ("config", "runtime", "settings", "workspaces", "ipython")
    }
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for name, settings in _USER_SETTINGS.items():
        path = folders["settings"] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    labconfig = folders["config"] / "labconfig"
    labconfig.mkdir(exist_ok=True)
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": _DISABLED_EXTENSIONS})
    )
    return folders


def _stop(process: subprocess.Popen[bytes], server: LabServer) -> None:
    # Kernels run in sessions of their own: ask the server to end them while it still can.
    with contextlib.suppress(Exception):
        for kernel in server.api("/api/kernels", timeout=5) or []:
            server.api(f"/api/kernels/{kernel['id']}", method="DELETE", timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # anything its group left behind


@contextlib.contextmanager
def jupyter_lab(root: str | Path, *, timeout: float = 90) -> Iterator[LabServer]:
    """A JupyterLab serving ``root``, up and answering within ``timeout`` seconds (else
    :class:`TimeoutError` with the end of its log), stopped at the end of the block.

    Its configuration lives in ``root/.lab`` (created), so the notebooks a test writes should go
    elsewhere in ``root``.
    """
    root = Path(root).resolve()
    folders = _write_settings(root / ".lab")
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(folders["config"]),
        "JUPYTER_RUNTIME_DIR": str(folders["runtime"]),
        "IPYTHONDIR": str(folders["ipython"]),
        "JUPYTER_PLATFORM_DIRS": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    argv = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.terminals_enabled=False",
        "--ServerApp.allow_remote_access=False",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        "--LabApp.expose_app_in_browser=True",
        f"--LabApp.user_settings_dir={folders['settings']}",
        f"--LabApp.workspaces_dir={folders['workspaces']}",
    ]
    if os.geteuid() == 0:
        argv.append("--allow-root")  # CI containers run as root
    log = root / ".lab" / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, ended by pid at teardown
        )
    server = LabServer(f"http://127.0.0.1:{port}", token, root, process.pid, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({process.returncode}): {server.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                server.api("/api/status", timeout=2)
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"JupyterLab did not answer within {timeout:g} s: {server.log_tail()}"
                )
            time.sleep(0.2)
        yield server
    finally:
        _stop(process, server)


@contextlib.contextmanager
def chromium_page(
    *, width: int = 1400, height: int = 1000, chromium: str | Path | None = None
) -> Iterator[Any]:
    """A Playwright page in headless Chromium (Debian's, installed by
    :func:`~browser_check.ensure_chromium` if missing; ``RuntimeError`` when that fails)."""
    from playwright.sync_api import sync_playwright

    executable = Path(chromium) if chromium is not None else ensure_chromium()
    if executable is None:
        raise RuntimeError("no Chromium: ensure_chromium could not install Debian's package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(executable), args=list(CHROMIUM_ARGS), headless=True
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def write_notebook(path: str | Path, cells: Sequence[str]) -> Path:
    """A notebook of code cells (no outputs) for the ``python3`` kernel of this environment."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in cells])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, str(path))
    return Path(path)


# JavaScript run in the page: the open notebook panel and its state, through window.jupyterapp.
_NOTEBOOK = "window.jupyterapp && window.jupyterapp.shell.currentWidget"
_KERNEL_IDLE = f"""() => {{
  const w = {_NOTEBOOK};
  const kernel = w && w.sessionContext && w.sessionContext.session
    && w.sessionContext.session.kernel;
  return !!(kernel && kernel.status === 'idle' && w.content && w.content.widgets.length);
}}"""
_ALL_RAN = f"""() => {{
  const w = {_NOTEBOOK};
  if (!w || !w.sessionContext.session || w.sessionContext.session.kernel.status !== 'idle') {{
    return false;
  }}
  const code = w.content.widgets.filter(c => c.model.type === 'code');
  const failed = code.some(c => c.model.outputs.toJSON().some(o => o.output_type === 'error'));
  return failed || code.every(c => c.model.executionCount !== null
    && c.model.executionState !== 'running');
}}"""
_ERRORS = f"""() => {{
  const w = {_NOTEBOOK};
  const found = [];
  w.content.widgets.forEach((c, i) => {{
    if (c.model.type !== 'code') return;
    for (const out of c.model.outputs.toJSON()) {{
      if (out.output_type === 'error') found.push(`cell ${{i}}: ${{out.ename}}: ${{out.evalue}}`);
    }}
  }});
  return found;
}}"""


def open_notebook(page: Any, server: LabServer, name: str, *, timeout: float = 60) -> None:
    """Open notebook ``name`` and wait until its kernel is started and idle."""
    page.goto(server.notebook_url(name), timeout=timeout * 1000)
    page.wait_for_function(_KERNEL_IDLE, timeout=timeout * 1000, polling=200)


def run_all_cells(page: Any, *, timeout: float = 60) -> None:
    """Run every cell of the open notebook and wait until each has run (or one failed: see
    :func:`cell_errors`) and the kernel is idle; Playwright's ``TimeoutError`` otherwise."""
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(_ALL_RAN, timeout=timeout * 1000, polling=200)


def cell_errors(page: Any) -> list[str]:
    """The error outputs of the open notebook, one line each (``cell 2: NameError: ...``)."""
    return list(page.evaluate(_ERRORS))
