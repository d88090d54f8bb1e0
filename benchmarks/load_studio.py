"""Load test of `opstylegan studio` (bounded, loopback only): E clients moving GANSpace sliders and I clients
inverting, all at once, for a fixed time, against a fresh server process with the shipped 32 px models.

Editors: each its own session, POST /api/edit back to back (a random component, sigma and layer range on a
random seed), as a slider being dragged. Inverters: each its own session, an example target, POST /api/invert
(baseline w+ and overparam W side by side, --steps each) and the job's event stream until it ends, then the
next job; the queue serves one job at a time, so inverters wait and see their position. When the time is up,
inverters close their streams, which cancels their jobs (the closed-tab path), and the script checks that every
request got an answer and that the server's queue is empty.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/load_studio.py --editors 20 --inverters 4 --duration 60
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import threading
import time
from urllib.parse import urlsplit

from studio_server import StudioProcess

TIMEOUT = 120.0  # per request; the whole test is bounded by --duration plus this


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))] if s else float("nan")


class Conn:
    """One keep-alive HTTP connection to the studio, with a session."""

    def __init__(self, url: str) -> None:
        u = urlsplit(url)
        assert u.hostname and u.hostname.startswith("127."), "load tests only target loopback addresses"
        self.host, self.port = u.hostname, u.port or 80
        self.http = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
        self.session = ""
        self.reconnects = 0
        status, body = self.call("POST", "/api/session", b"{}")
        assert status == 200, status
        self.session = json.loads(body)["session"]

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One request; a kept-alive connection that the server closed while idle (uvicorn closes them after
        5 s) is reopened and the request sent again once, as browsers do. Other failures raise."""
        headers = {"X-Studio-Session": self.session, "Content-Type": "application/json"}
        for attempt in (0, 1):
            try:
                self.http.request(method, path, body=body, headers=headers)
                r = self.http.getresponse()
                return r.status, r.read()
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                self.http.close()
                self.http = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
                if attempt:
                    raise
                self.reconnects += 1
        raise AssertionError("unreachable")


def editor(url: str, deadline: float, seed: int, out: dict) -> None:
    rng = random.Random(seed)
    c = Conn(url)
    while time.monotonic() < deadline:
        lo = rng.randrange(8)
        body = json.dumps({"source": {"model": rng.choice(["main", "baseline"]), "seed": rng.randrange(1000),
                                      "truncation": 0.7},
                           "sigmas": {str(rng.randrange(8)): round(rng.uniform(-5, 5), 1)},
                           "layers": f"{lo}-{rng.randrange(lo, 8)}"}).encode()
        t = time.perf_counter()
        try:
            status, data = c.call("POST", "/api/edit", body)
        except (OSError, http.client.HTTPException) as e:
            out["errors"].append(repr(e))
            continue
        ms = (time.perf_counter() - t) * 1000
        if status == 200 and data[:4] == b"\x89PNG":
            out["edit_ms"].append(ms)
        else:
            out["bad"].append(status)


def inverter(url: str, deadline: float, index: int, steps: int, out: dict) -> None:
    try:
        _inverter(url, deadline, index, steps, out)
    except (OSError, http.client.HTTPException) as e:  # an unanswered request: counted, reported
        out["errors"].append(repr(e))


def _inverter(url: str, deadline: float, index: int, steps: int, out: dict) -> None:
    c = Conn(url)
    status, body = c.call("POST", f"/api/targets?example=fmnist-test-0000{index % 8}.png")
    if status != 200:
        out["bad"].append(status)
        return
    target = json.loads(body)["id"]
    runs = [{"model": "baseline", "space": "w+"}, {"model": "main", "space": "W"}]
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        status, body = c.call("POST", "/api/invert", json.dumps({"target": target, "runs": runs,
                                                                 "steps": steps}).encode())
        if status != 200:
            out["bad"].append(status)
            return
        job = json.loads(body)["job"]
        stream = http.client.HTTPConnection(c.host, c.port, timeout=TIMEOUT)
        stream.request("GET", f"/api/jobs/{job}/events?s={c.session}")
        resp = stream.getresponse()
        final, started = None, None
        while final is None:
            line = resp.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                ev = json.loads(line[6:])
                if ev["type"] == "queue":
                    out["positions"].append(ev["position"])
                elif ev["type"] == "running":
                    started = time.perf_counter()
                    out["wait_s"].append(started - t0)
                elif ev["type"] == "progress":
                    out["steps"].append(1)  # one live view = `every` steps; the total is counted below
                    out["last_step"][job] = (ev["run"], ev["step"])
                elif ev["type"] in ("done", "cancelled", "failed"):
                    final = ev["type"]
            if time.monotonic() > deadline and final is None:
                break  # time is up: close the stream, which must cancel the job
        stream.close()
        if final is None:
            out["closed_while_active"].append(job)
            return
        out[final].append(time.perf_counter() - (started or t0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--editors", type=int, default=20)
    ap.add_argument("--inverters", type=int, default=4)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    ap.add_argument("--steps", type=int, default=20, help="inversion steps per run (two runs per job)")
    a = ap.parse_args()
    out: dict = {k: [] for k in ("edit_ms", "bad", "errors", "positions", "wait_s", "done", "cancelled", "failed",
                                 "closed_while_active", "steps")}
    out["last_step"] = {}
    server = StudioProcess()
    with server as url:
        rss_start = server.status("VmRSS")
        deadline = time.monotonic() + a.duration
        threads = [threading.Thread(target=editor, args=(url, deadline, i, out)) for i in range(a.editors)]
        threads += [threading.Thread(target=inverter, args=(url, deadline, i, a.steps, out))
                    for i in range(a.inverters)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(a.duration + 2 * TIMEOUT)
        elapsed = time.monotonic() - t0
        hung = sum(t.is_alive() for t in threads)
        # The closed streams must have emptied the queue: a fresh client's job starts at once.
        time.sleep(3)
        c = Conn(url)
        status, body = c.call("POST", "/api/targets?example=fmnist-test-00000.png")
        status, body = c.call("POST", "/api/invert", json.dumps({"target": json.loads(body)["id"], "runs": [
            {"model": "main", "space": "W"}], "steps": 1}).encode())
        queue_after = json.loads(body)["position"] if status == 200 else f"HTTP {status}"
        peak = server.status("VmHWM")
    ms = out["edit_ms"]
    report = {
        "editors": a.editors, "inverters": a.inverters, "duration_s": round(elapsed, 1), "steps_per_run": a.steps,
        "edits": {"answered_ok": len(ms), "non_200": len(out["bad"]), "errors": len(out["errors"]),
                  "per_s": round(len(ms) / elapsed, 1), "median_ms": round(statistics.median(ms), 1) if ms else None,
                  "p95_ms": round(pct(ms, 95), 1), "p99_ms": round(pct(ms, 99), 1), "max_ms": round(max(ms), 1)
                  if ms else None},
        "inversions": {"done": len(out["done"]), "failed": len(out["failed"]), "cancelled": len(out["cancelled"]),
                       "closed_while_queued_or_running": len(out["closed_while_active"]),
                       "max_queue_position_seen": max(out["positions"], default=0),
                       "optimisation_steps_done": sum(run * a.steps + step for run, step in out["last_step"].values()),
                       "queue_wait_s_median": round(statistics.median(out["wait_s"]), 1) if out["wait_s"] else None,
                       "run_time_s_median": round(statistics.median(out["done"]), 1) if out["done"] else None},
        "queue_position_of_a_new_job_after": queue_after, "threads_still_running": hung,
        "server_rss_start_mib": round(rss_start, 1), "server_peak_rss_mib": round(peak, 1),
        "error_samples": out["errors"][:3],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
