"""Latency of `opstylegan studio`: a GANSpace slider moved in a real browser until the new image is on the page
(median, p95), the first page load, and the server's memory with the shipped models loaded.

The server is the real command (`opstylegan studio`, shipped 32 px models, CPU) in its own process; the browser
is the system Chromium, headless, driven by Playwright. Each slider move sets a new value and waits until the
page has shown the image for it (the <img> load), one move at a time. Also measured: the same edit request
without the browser (HTTP round trip from Python), and the generator's synthesis alone (in this process, at
the same time), to separate the server's and the machine's shares.

    OMP_NUM_THREADS=1 python benchmarks/bench_studio.py --moves 200
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import urllib.request

from studio_server import StudioProcess

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps", "--mute-audio"]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def summary(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 1), "p95_ms": round(pct(ms, 95), 1),
            "max_ms": round(max(ms), 1)}


def http_edits(url: str, n: int) -> list[float]:
    req = urllib.request.Request(url + "api/session", data=b"{}", method="POST")
    with urllib.request.urlopen(req) as r:
        session = json.loads(r.read())["session"]
    out = []
    for i in range(n):
        body = json.dumps({"source": {"model": "main", "seed": 5, "truncation": 0.7},
                           "sigmas": {"0": (i % 21 - 10) / 2}, "layers": "0-7"}).encode()
        req = urllib.request.Request(url + "api/edit", data=body, method="POST",
                                     headers={"X-Studio-Session": session, "Content-Type": "application/json"})
        t = time.perf_counter()
        with urllib.request.urlopen(req) as r:
            r.read()
        out.append((time.perf_counter() - t) * 1000)
    return out


def bare_synthesis(n: int) -> list[float]:
    """The generator alone (one 32 px image, no_grad, this process): the floor under every edit's latency."""
    import torch

    from opstylegan.models.generator import Generator
    from opstylegan.pretrained import resolve_model

    G = Generator.from_pretrained(resolve_model("fmnist32-overparam")).eval()
    out = []
    with torch.no_grad():
        W = G.mapping(G.z_from_seeds([5]), truncation_psi=0.7)
        for _ in range(n):
            t = time.perf_counter()
            G.synthesis(W)
            out.append((time.perf_counter() - t) * 1000)
    return out


def browser(url: str, moves: int, chromium: str) -> dict[str, object]:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True,
                                                   args=CHROMIUM_ARGS, viewport={"width": 1200, "height": 860})
        page = ctx.new_page()
        t = time.perf_counter()
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        first_load = (time.perf_counter() - t) * 1000
        nav = page.evaluate("() => { const n = performance.getEntriesByType('navigation')[0];"
                            " return {dom: n.domContentLoadedEventEnd, load: n.loadEventEnd}; }")
        page.click("nav button[data-tab='edit']")
        page.wait_for_function("() => !!document.querySelector('#edit-img').dataset.hash")
        # In the page: set the slider, fire 'input' as a drag does, and time until the new image has loaded.
        times = page.evaluate("""async (moves) => {
            const s = document.querySelector('#pc-0'), img = document.querySelector('#edit-img');
            const out = [];
            for (let i = 0; i < moves; i++) {
              const v = img.dataset.version;
              const t0 = performance.now();
              s.value = String(((i % 21) - 10) / 2 + 0.05);
              s.dispatchEvent(new Event('input', {bubbles: true}));
              await new Promise((ok) => { const f = () => (img.dataset.version !== v && img.complete)
                  ? ok() : requestAnimationFrame(f); f(); });
              out.push(performance.now() - t0);
            }
            return out; }""", moves)
        ctx.close()
    return {"first_load_ms": round(first_load, 1), "dom_content_loaded_ms": round(nav["dom"], 1),
            "load_event_ms": round(nav["load"], 1), "slider": summary(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moves", type=int, default=200, help="slider moves in the browser (and HTTP edits)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    a = ap.parse_args()
    server = StudioProcess()
    with server as url:
        out: dict[str, object] = {"server_rss_after_start_mib": round(server.status("VmRSS"), 1)}
        out["server_http_edit"] = summary(http_edits(url, a.moves))
        out["browser"] = browser(url, a.moves, a.chromium)
        out["bare_synthesis_same_time"] = summary(bare_synthesis(a.moves))
        out["server_rss_end_mib"] = round(server.status("VmRSS"), 1)
        out["server_peak_rss_mib"] = round(server.status("VmHWM"), 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
