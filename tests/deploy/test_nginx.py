"""deploy/nginx/nginx.conf, run for real by Debian's nginx with the upstream pointed at the live
server: the config is valid, and a chat stream reaches the client token by token through it.
(glmserve also sends `X-Accel-Buffering: no` on SSE; `proxy_buffering off` covers every other
response and other upstreams, and test_compose.py asserts it is in the file.)"""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.live_server import SubprocessServer, free_port

CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "nginx.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(),
                                reason="nginx absent: Debian's `nginx-light` provides it (make test-tools)")


@pytest.fixture(scope="module")
def proxy(live_server: SubprocessServer, tmp_path_factory: pytest.TempPathFactory):
    """The repo's nginx.conf with two substitutions: the compose service name becomes the live server,
    and it listens on a free loopback port. Everything else (least_conn, buffering) is as shipped."""
    prefix = tmp_path_factory.mktemp("nginx")
    port = free_port()
    text = CONF.read_text()
    text, n_up = re.subn(r"glmserve-replica:8000", f"127.0.0.1:{live_server.port}", text)
    text, n_listen = re.subn(r"listen 8080;", f"listen 127.0.0.1:{port};", text)
    assert n_up == 1 and n_listen == 1
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    directives = f"daemon off; pid {prefix}/nginx.pid; error_log {prefix}/error.log;"
    check = subprocess.run([NGINX, "-t", "-p", str(prefix), "-c", str(conf), "-g", directives],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf), "-g", directives],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful stop of the master and its workers
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_health_through_the_proxy(proxy: str) -> None:
    assert httpx.get(proxy + "/health", timeout=10).json()["status"] == "ok"


def test_sse_is_not_buffered_by_the_proxy(proxy: str) -> None:
    body = {"model": "default", "messages": [{"role": "user", "content": "Count to twenty."}],
            "max_tokens": 12, "temperature": 0, "stream": True}
    arrivals = []
    with httpx.stream("POST", proxy + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:") and '"content"' in line:
                arrivals.append(time.monotonic())
    assert len(arrivals) >= 6
    # chunks arrived spread over the generation, not in one burst at the end
    spread = arrivals[-1] - arrivals[0]
    assert spread > 0.1
    assert arrivals[len(arrivals) // 2] - arrivals[0] > spread * 0.2
