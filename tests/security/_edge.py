"""Helpers of the edge attacks: real server processes and raw HTTP/1.1 requests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.servers import free_port, wait_until_up

#: Variables of the developer's shell that would change what the servers do.
_SCRUBBED = ("ZPE_API_KEY", "ZPE_ADMIN_TOKEN", "ZPE_PUSH_SHARED_SECRET", "ZPE_METRICS_TOKEN")


@contextmanager
def server_process(
    module: str, env: dict[str, str], log: Path, *, host: str = "127.0.0.1"
) -> Iterator[tuple[int, int]]:
    """``python -m <module> serve --host HOST --port P`` until the block ends; yields
    the port and the process id."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    full_env |= {"ZPE_LOG_LEVEL": "INFO", **env}
    argv = [sys.executable, "-m", module, "serve", "--host", host, "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=full_env, stdout=out, stderr=subprocess.STDOUT)
        try:
            # Start-up alone can take a minute under load.
            wait_until_up(f"http://127.0.0.1:{port}/healthz", proc, log=log, timeout=180)
            yield port, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def read_response(sock: socket.socket, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 answer with a Content-Length."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body[:length]


def send_chunked(
    port: int, path: str, headers: dict[str, str], *, chunk: int, total: int
) -> tuple[int, dict[str, str], bytes, int]:
    """POST ``total`` bytes in chunks of ``chunk`` with no Content-Length, stopping as soon
    as the server answers. Returns status, headers, body and how many bytes were sent."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    payload = b"x" * chunk
    frame = f"{chunk:x}\r\n".encode() + payload + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        while sent < total:
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed: the rest is never read
            sent += chunk
            sock.setblocking(False)
            try:
                peeked = sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                peeked = b""
            finally:
                sock.setblocking(True)
            if peeked:
                break
        else:
            sock.sendall(b"0\r\n\r\n")
        status, answer_headers, body = read_response(sock)
    return status, answer_headers, body, sent


@dataclass
class LocalApi:
    """A real API process (``zpe serve``) on 127.0.0.1 with ``ZPE_AUTH_MODE=none``."""

    port: int
    pid: int
    store: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def local_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApi]:
    """One API process for a module's attacks (starting one costs seconds)."""
    root = tmp_path_factory.mktemp("local-api")
    env = {
        "ZPE_STORE_URL": f"file://{root / 'store'}",
        "ZPE_EXECUTION_MODE": "http-pull",  # no workers: nothing runs
        "ZPE_AUTH_MODE": "none",
        "ZPE_DEFAULT_ENGINE": "mock",
        "ZPE_MAX_INPUT_BYTES": str(64 * 1024),
        "ZPE_ALLOWED_HOSTS": "zpe.lab.example",
    }
    with server_process("zpe_api.cli", env, root / "api.log") as (port, pid):
        yield LocalApi(port, pid, root / "store")
