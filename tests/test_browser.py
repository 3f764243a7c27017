"""A real browser runs notebook 01 in JupyterLab and moves the dashboard's sparsity slider: the
plotly figure in the same dashboard must redraw, and the page's other figures must not change.

JupyterLab serves a temporary copy of notebooks/ (it autosaves; the real folder is never touched).
Debian's chromium (`make browser` installs it; `$SPONLIB_CHROMIUM` points elsewhere) is driven by
Playwright through `executable_path`, so Playwright never downloads a browser. A screenshot taken
after the slider moved (and one on failure) goes to `$SPONLIB_TEST_ARTIFACTS`, by default
build/test-artifacts/.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sponlib.reports import png

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "01_activation_sparsity.ipynb"
ARTIFACTS = Path(os.environ.get("SPONLIB_TEST_ARTIFACTS") or ROOT / "build" / "test-artifacts")
# Headless as root, and quiet: without the background-networking switches chromium keeps trying
# to reach Google's services from a machine that has no route to them.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# JupyterLab settings for the test's own (empty) settings folder: every cell attached to the page
# (the default virtualises cells scrolled out of view) and no requests to the internet.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}
SERVER_START_S = 240
LAB_LOAD_S = 180
RUN_ALL_S = 600  # the whole notebook on 2 busy CPU cores
REDRAW_S = 180  # a new level runs the model on the probe once


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_path() -> str:
    """The chromium binary to drive (the one the README figures use); the test fails, not skips,
    without one."""
    try:
        return png.chromium_path()
    except png.BrowserNotFoundError as e:
        pytest.fail(str(e), pytrace=False)


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


class Lab:
    """A JupyterLab server on 127.0.0.1 over a folder, with its own settings and workspaces."""

    def __init__(self, root_dir: Path, tmp: Path):
        self.root_dir, self.port, self.token = root_dir, _free_port(), "sponlib-browser-test"
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "jupyterlab.log"
        config = tmp / "jupyter-config"  # no user configuration, settings or workspace leak in
        for plugin, values in LAB_SETTINGS.items():
            settings = config / "lab" / "user-settings" / f"{plugin}.jupyterlab-settings"
            settings.parent.mkdir(parents=True, exist_ok=True)
            settings.write_text(json.dumps(values))
        self.env = {
            **os.environ,
            "JUPYTER_TOKEN": self.token,
            "JUPYTER_CONFIG_DIR": str(config),
            "JUPYTER_DATA_DIR": str(tmp / "jupyter-data"),
            "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter-runtime"),
        }
        self.command = [
            sys.executable,
            "-m",
            "jupyterlab",
            f"--ServerApp.root_dir={root_dir}",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            "--no-browser",
            "--LabApp.extension_manager=readonly",
        ]  # never asks PyPI about extensions
        if os.geteuid() == 0:
            self.command.append("--allow-root")
        self.process: subprocess.Popen | None = None

    def log_tail(self) -> str:
        return f"JupyterLab log ({self.log}), last lines:\n{_tail(self.log)}"

    def __enter__(self) -> "Lab":
        with open(self.log, "w") as log:  # a file, not a pipe: nobody reads a pipe until the end
            self.process = subprocess.Popen(
                self.command,
                cwd=self.root_dir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"JupyterLab exited with {self.process.returncode}.\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=5):
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s.\n{self.log_tail()}")
                time.sleep(1)

    def __exit__(self, *exc) -> None:
        # The server's whole process group; on SIGTERM it shuts its kernels down, and a kernel
        # (in a session of its own) also exits by itself once its parent is gone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@contextlib.contextmanager
def chromium_page(tmp: Path):
    """A page of a fresh headless chromium profile, driven through Playwright."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp / "chromium-profile"),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
            timeout=120_000,
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


# In the page: the open notebook's code cells, prompts and kernel state.
_NOTEBOOK_STATE_JS = """() => {
    const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
    if (!panel) return null;
    const cells = [...panel.querySelectorAll('.jp-CodeCell')]  // empty cells never run
        .filter(c => (c.querySelector('.jp-InputArea-editor') || {}).innerText?.trim());
    const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
    const errors = [...panel.querySelectorAll('.jp-OutputArea-output')]
        .map(o => o.innerText).filter(t => t.includes('Traceback (most recent call last)'));
    return {
        prompts: cells.map(c => (c.querySelector('.jp-InputArea-prompt') || {}).innerText || ''),
        kernel: indicator ? indicator.getAttribute('data-status') : null,
        outputs: panel.querySelectorAll('.jp-OutputArea-output').length,
        errors,
    };
}"""

# In the page: from the "sparsity" slider up to the smallest box around it that holds a plotly
# figure (the dashboard), without leaving the cell output that shows it.
_DASHBOARD_JS = """(slider) => {
    let box = slider;
    while (box && !box.querySelector('.js-plotly-plot')) {
        if (box.classList.contains('jp-OutputArea-output')) return null;
        box = box.parentElement;
    }
    if (box) box.setAttribute('data-sponlib-dashboard', '');
    return box !== null;
}"""

# In the page: what every plotly figure shows (traces' x and y, threshold shapes, title), and
# whether it sits in the dashboard.
_FIGURES_JS = """() => [...document.querySelectorAll('.js-plotly-plot')].map(gd => {
    const plain = v => (v && typeof v === 'object' && v.length !== undefined) ? Array.from(v) : v;
    const layout = gd.layout || {};
    return {
        inDashboard: gd.closest('[data-sponlib-dashboard]') !== null,
        data: (gd.data || []).map(t => ({type: t.type, x: plain(t.x), y: plain(t.y)})),
        shapes: JSON.parse(JSON.stringify(layout.shapes || [])),
        title: layout.title && (layout.title.text || layout.title),
    };
})"""


class Session:
    """Drives JupyterLab in the page; every failure message carries the server log and a screenshot."""

    def __init__(self, page, lab: Lab, name: str):
        self.page, self.lab, self.name = page, lab, name
        self.console: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.console.append(m.text))
        page.on("pageerror", lambda e: self.console.append(f"page error: {e}"))

    def screenshot(self, suffix: str = "") -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"browser-{Path(self.name).stem}{suffix}.png"
        self.page.screenshot(path=str(path))
        return path

    def fail(self, message: str) -> None:
        try:
            shot = f"screenshot: {self.screenshot('-failure')}"
        except Exception as e:  # the browser itself may be gone
            shot = f"no screenshot ({e})"
        console = "\n".join(self.console[-20:]) or "(none)"
        pytest.fail(f"{message}\n{shot}\nbrowser console errors:\n{console}\n{self.lab.log_tail()}", pytrace=False)

    def state(self) -> dict:
        self.accept_kernel_dialog()
        return self.page.evaluate(_NOTEBOOK_STATE_JS) or {"prompts": [], "kernel": None, "errors": [], "outputs": 0}

    def wait_for(self, what: str, check, timeout_s: float, poll_s: float = 1.0):
        deadline = time.monotonic() + timeout_s
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                self.fail(f"{what}: not within {timeout_s:.0f} s")
            time.sleep(poll_s)

    def open_notebook(self) -> None:
        self.page.goto(f"{self.lab.url}/lab/tree/{self.name}?token={self.lab.token}", timeout=LAB_LOAD_S * 1000)
        idle = []  # the indicator can read idle for a moment before the kernel is connected

        def ready() -> bool:
            idle.append(self.state()["kernel"] == "idle")
            return len(idle) >= 3 and all(idle[-3:])

        self.wait_for(f"JupyterLab opens {self.name} and its kernel starts", ready, LAB_LOAD_S)

    def accept_kernel_dialog(self) -> None:
        """Running cells before the kernel is attached, or a notebook saved without a kernel, asks
        for one: take the default (the venv's Python)."""
        select = self.page.locator(".jp-Dialog").get_by_role("button", name="Select", exact=True)
        if select.count():
            select.click()

    def menu(self, menu: str, item: str) -> None:
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu}$")).click()
        self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$")).click()

    def run_all(self) -> float:
        """Clear the committed outputs, run every cell, wait until each has run; returns seconds."""
        self.menu("Edit", "Clear Outputs of All Cells")  # so that nothing below is left from the commit

        def cleared() -> bool:
            state = self.state()
            return not state["outputs"] and not any(p.strip("[]: ") for p in state["prompts"])

        self.wait_for("the committed outputs are cleared", cleared, 60)
        started = time.monotonic()
        self.menu("Run", "Run All Cells")
        idle_since = None

        def done() -> bool:
            nonlocal idle_since
            state = self.state()
            if state["errors"]:
                self.fail("a cell raised:\n" + "\n---\n".join(e[-3000:] for e in state["errors"]))
            prompts = state["prompts"]
            if prompts and all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts):
                return True
            # stopped on an error without a traceback shown, or never started
            idle_since = (idle_since or time.monotonic()) if state["kernel"] == "idle" else None
            if idle_since and time.monotonic() - idle_since > 30:
                self.fail(f"the kernel went idle with cells not run: prompts {prompts}")
            return False

        self.wait_for(f"Run All Cells of {self.name} completes", done, RUN_ALL_S, poll_s=2)
        return time.monotonic() - started

    def figures(self) -> list[dict]:
        return self.page.evaluate(_FIGURES_JS)

    def sparsity_slider(self):
        sliders = self.page.locator(".widget-slider").filter(
            has=self.page.locator(".widget-label", has_text=re.compile(r"^\s*sparsity\s*$"))
        )
        self.wait_for('the dashboard\'s "sparsity" slider renders', lambda: sliders.count() > 0, 120)
        slider = sliders.first
        slider.scroll_into_view_if_needed()
        if not slider.evaluate(_DASHBOARD_JS):
            self.fail('no plotly figure in the widget box of the "sparsity" slider')
        self.wait_for(
            "the dashboard's plotly figure draws its data",
            lambda: any(f["inDashboard"] and f["data"] and f["data"][0]["x"] for f in self.figures()),
            120,
        )
        return slider


def run_dashboard_in_browser(notebooks: Path, name: str, tmp: Path) -> dict:
    """Copy `notebooks` to `tmp`, serve the copy, run notebook `name` in chromium, move its
    sparsity slider one stop (right, or left from the last) and check that the dashboard's figure
    redraws and no other figure changes. Returns the slider's values, timings and the screenshot."""
    if not (notebooks / name).is_file():
        pytest.fail(f"{notebooks / name} is missing: the browser test runs its dashboard", pytrace=False)
    copy = tmp / "notebooks"
    shutil.copytree(notebooks, copy, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    timings, started = {}, time.monotonic()
    with Lab(copy, tmp) as lab, chromium_page(tmp) as page:
        session = Session(page, lab, name)
        try:
            session.open_notebook()
            timings["open_s"] = time.monotonic() - started
            timings["run_all_s"] = session.run_all()
            slider = session.sparsity_slider()
            readout = slider.locator(".widget-readout")
            before_value, before = readout.inner_text(), session.figures()
            handle = slider.locator(".noUi-handle")
            at_end = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
            handle.focus()
            handle.press("ArrowLeft" if at_end else "ArrowRight")  # noUiSlider's keyboard step: one level
            moved = time.monotonic()
            session.wait_for(
                f"the slider's readout moves from {before_value}",
                lambda: readout.inner_text() != before_value,
                30,
                poll_s=0.2,
            )
            after_value = readout.inner_text()
            changed = lambda: [i for i, (b, a) in enumerate(zip(before, session.figures())) if b != a]  # noqa: E731
            session.wait_for(
                f"a dashboard figure redraws after the slider moved {before_value} -> {after_value}",
                lambda: any(before[i]["inDashboard"] for i in changed()),
                REDRAW_S,
                poll_s=0.5,
            )
            timings["redraw_s"] = time.monotonic() - moved
            after = session.figures()
            if len(after) != len(before):
                session.fail(f"the page had {len(before)} plotly figures before the move and {len(after)} after")
            outside = [i for i in changed() if not before[i]["inDashboard"]]
            if outside:
                session.fail(f"figures outside the dashboard changed too: {outside}")
            page.locator("[data-sponlib-dashboard]").evaluate("box => box.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(1000)  # let plotly finish its transition before the picture
            screenshot = session.screenshot()
        except Exception as e:  # Playwright's own timeouts and errors (pytest.fail is no Exception)
            session.fail(f"{type(e).__name__}: {e}")
    timings["total_s"] = time.monotonic() - started
    return {"values": (before_value, after_value), "screenshot": screenshot, **timings}


@pytest.mark.slow
def test_sparsity_slider_redraws_the_dashboard_in_chromium(tmp_path):
    chromium_path()  # fail first, with the fix, when there is no browser
    result = run_dashboard_in_browser(ROOT / "notebooks", NOTEBOOK, tmp_path)
    print(
        f"slider {result['values'][0]} -> {result['values'][1]}; open {result['open_s']:.0f} s, run all "
        f"{result['run_all_s']:.0f} s, redraw {result['redraw_s']:.1f} s, total {result['total_s']:.0f} s; "
        f"screenshot {result['screenshot']}"
    )
