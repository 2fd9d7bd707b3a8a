"""``python -m webapp.serve`` (what ``make run`` runs): it sets up a fresh data folder, serves the
application with its workers, and Ctrl+C stops every process it started."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.e2e_support import _answers, free_port, wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def children_of(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_make_run_serves_the_app_with_its_workers_and_ctrl_c_stops_them_all(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG")}
    env.update(NETADAPT_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen([sys.executable, "-m", "webapp.serve", "--port", str(port)], cwd=REPO, env=env,
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/accounts/login/"
        wait_until(lambda: _answers(url) or serve.poll() is not None, "the server to answer", None, 300)
        assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        children = children_of(serve.pid)
        lines = [command_line(pid) for pid in children]
        assert len(children) == 4, lines
        assert sum("uvicorn" in line for line in lines) == 1
        workers = [line for line in lines if "celery" in line]
        assert any("--beat" in line and "-Q celery" in line for line in workers), workers
        assert any("-Q device." in line and "--concurrency 1" in line for line in workers), workers
        assert any("-Q checking" in line and "--concurrency 1" in line for line in workers), workers
        # The data folder holds the embedded database with the system device, and the secret key
        # generated on this first start, readable by its owner only.
        assert (tmp_path / "data" / "db.sqlite3").exists()
        assert stat.S_IMODE((tmp_path / "data" / "secret_key").stat().st_mode) == 0o600
        # DEBUG is off, yet the pages get their CSS and scripts (WhiteNoise, after collectstatic).
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/static/css/app.css", timeout=60) as css:
            assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/static/js/job.js", timeout=60) as script:
            assert script.status == 200 and "javascript" in script.headers["Content-Type"]

        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=120) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        assert not [pid for pid in children if Path(f"/proc/{pid}").exists() and command_line(pid)]
        assert "stopped" in (tmp_path / "serve.log").read_text()
    finally:
        if serve.poll() is None:
            serve.kill()
        log.close()


def make_datasets(package: str, *, unprivileged: bool) -> subprocess.CompletedProcess:
    """``make datasets`` (the step of ``make run`` that offers Fashion-MNIST) for ``package``."""
    command = ["make", "-s", "--no-print-directory", "datasets", f"FASHION_MNIST_PACKAGE={package}"]
    if unprivileged and os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_make_run_says_in_one_line_how_to_add_fashion_mnist_when_it_cannot_install_it():
    result = make_datasets("netadapt-test-no-such-package", unprivileged=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Fashion-MNIST is not offered: 'sudo apt-get install netadapt-test-no-such-package' adds it "
        "(then make run again)"]


def test_make_run_is_silent_about_fashion_mnist_once_it_is_installed():
    if subprocess.run(["dpkg", "-s", "dataset-fashion-mnist"], capture_output=True).returncode != 0:
        pytest.skip("dataset-fashion-mnist is not installed here (make run would install it)")
    result = make_datasets("dataset-fashion-mnist", unprivileged=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
