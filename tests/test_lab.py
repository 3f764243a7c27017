"""`make lab` serves notebooks/ on 127.0.0.1: start it, ask the server, stop it."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_make_lab_serves_the_notebooks():
    port, token = _free_port(), "sponlib-test-token"
    env = {**os.environ, "JUPYTER_TOKEN": token}
    lab = subprocess.Popen(
        ["make", "lab", f"LAB_PORT={port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        listing, deadline = None, time.monotonic() + 240
        while listing is None and time.monotonic() < deadline:
            if lab.poll() is not None:
                pytest.fail(f"make lab exited with {lab.returncode}:\n{lab.stdout.read()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=5) as r:
                    listing = json.load(r)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        assert listing is not None, "JupyterLab did not answer within 240 s"
        served = {item["name"] for item in listing["content"]}
        on_disk = {p.name for p in (ROOT / "notebooks").iterdir() if not p.name.startswith(".")}
        assert served == on_disk and any(name.endswith(".ipynb") for name in served)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=10) as r:
            assert r.status == 200 and b"JupyterLab" in r.read()
        # no news pop-up: the project's settings answer JupyterLab's question before it is asked
        notification = "@jupyterlab/apputils-extension:notification"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab/api/settings/{notification}?token={token}") as r:
            defaults = {key: value["default"] for key, value in json.load(r)["schema"]["properties"].items()}
        assert defaults["fetchNews"] == "false" and defaults["checkForUpdates"] is False
    finally:
        os.killpg(lab.pid, signal.SIGTERM)
        try:
            lab.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(lab.pid, signal.SIGKILL)
