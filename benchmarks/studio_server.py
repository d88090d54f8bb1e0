"""Start `opstylegan studio` as its own process on a free loopback port, for the studio benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from urllib.parse import urlsplit


class StudioProcess:
    """``with StudioProcess([...extra CLI args]) as url:`` runs the real command; :meth:`rss_mib` reads its memory."""

    def __init__(self, args: list[str] | None = None, *, startup_timeout: float = 600) -> None:
        self.args = args or []
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> str:
        cmd = [sys.executable, "-m", "opstylegan", "studio", "--host", "127.0.0.1", "--port", "0", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env={**os.environ})
        deadline = time.monotonic() + self.startup_timeout
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "open http://" not in line:
            self.proc.kill()
            raise RuntimeError(f"the studio did not start: {line!r}")
        self.url = line.split("open ")[1].split()[0]
        host = urlsplit(self.url).hostname or ""
        if not host.startswith("127."):
            raise RuntimeError(f"refusing to load-test a non-loopback address {host!r}")
        while True:  # listening once the URL is printed; wait for the first answer
            try:
                with urllib.request.urlopen(self.url, timeout=10):
                    return self.url
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def status(self, key: str) -> float:
        """A /proc/PID/status memory figure (VmRSS, VmHWM) in MiB."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
        raise KeyError(key)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
