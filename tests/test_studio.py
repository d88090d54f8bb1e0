"""`opstylegan studio`: the job queue, the GANSpace cache, the engine, and the HTTP app served for real
(uvicorn on a free loopback port) with the shipped 32 px models. The browser test is test_studio_browser.py."""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from opstylegan.studio.jobs import Job, JobCancelled, JobQueue, QueueFullError, RunSpec

REPO = Path(__file__).resolve().parents[1]
STATIC = REPO / "src" / "opstylegan" / "studio" / "static"


# ----------------------------------------------------------------------------------------------------------
# Helpers shared with test_studio_browser.py.

def make_studio(cache_dir: Path, **kw):
    """A Studio over the shipped models (GANSpace from 512 vectors, cached in cache_dir)."""
    from opstylegan.studio.engine import load_studio_model
    from opstylegan.studio.service import Studio

    models = {key: load_studio_model(key, ref, torch.device("cpu"), cache_dir, num_samples=512)
              for key, ref in (("main", "fmnist32-overparam"), ("baseline", "fmnist32-baseline"))}
    return Studio(models, **kw)


class Client:
    """A tiny HTTP client for one studio session (stdlib only)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.session = ""
        self.info = self.post_json("/api/session")
        self.session = self.info["session"]

    def request(self, path: str, *, method: str = "GET", body: bytes | None = None, headers: dict | None = None
                ) -> tuple[int, dict, bytes]:
        h = {"X-Studio-Session": self.session, **(headers or {})}
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def post_json(self, path: str, obj: dict | None = None, *, expect: int = 200):
        status, headers, data = self.request(path, method="POST", body=json.dumps(obj or {}).encode(),
                                             headers={"Content-Type": "application/json"})
        assert status == expect, (status, data[:300])
        return json.loads(data) if headers.get("content-type", "").startswith("application/json") else data

    def error(self, path: str, obj: dict | None = None, *, body: bytes | None = None, headers: dict | None = None
              ) -> tuple[int, str]:
        data = body if body is not None else json.dumps(obj or {}).encode()
        status, _, out = self.request(path, method="POST", body=data, headers=headers)
        assert status >= 400, f"expected a refusal, got {status}"
        return status, json.loads(out)["error"]

    def events(self, job: str, *, until=("done", "cancelled", "failed"), timeout: float = 300):
        """Read the job's event stream until a final event; returns the events (dicts)."""
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        conn.request("GET", f"/api/jobs/{job}/events?s={self.session}")
        resp = conn.getresponse()
        assert resp.status == 200
        out = []
        try:
            for ev in iter_sse(resp):
                out.append(ev)
                if ev["type"] in until:
                    break
        finally:
            conn.close()
        return out


def iter_sse(resp):
    data = None
    while True:
        line = resp.readline()
        if not line:
            return
        line = line.decode().rstrip("\n")
        if line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and data is not None:
            yield data
            data = None


def png_image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# ----------------------------------------------------------------------------------------------------------
# The job queue (no torch, no web).

def _gated_queue(max_waiting: int = 8):
    gates: dict[str, threading.Event] = {}
    ran: list[str] = []

    def execute(job: Job) -> None:
        ran.append(job.payload)
        if job.payload == "boom":
            raise RuntimeError("kaputt")
        gate = gates.setdefault(job.payload, threading.Event())
        while not gate.wait(0.01):
            job.check_cancelled()

    return JobQueue(execute, max_waiting=max_waiting), gates, ran


def _wait(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_queue_runs_one_job_at_a_time_in_order_with_positions():
    q, gates, ran = _gated_queue()
    jobs = [Job(session=f"s{i}", runs=[RunSpec("main", "W")], steps=1, payload=f"j{i}") for i in range(3)]
    positions = [q.submit(j) for j in jobs]
    _wait(lambda: jobs[0].state == "running")
    assert [q.position(j) for j in jobs] == [0, 1, 2]
    assert positions == [0, 1, 2]
    assert ran == ["j0"]  # the others wait
    gates.setdefault("j0", threading.Event()).set()
    _wait(lambda: jobs[1].state == "running")
    assert jobs[0].state == "done" and q.position(jobs[0]) is None
    assert [q.position(j) for j in jobs[1:]] == [0, 1]
    for j in jobs[1:]:
        gates.setdefault(j.payload, threading.Event()).set()
    assert all(j.wait(10) for j in jobs)
    assert ran == ["j0", "j1", "j2"] and [e["type"] for e in jobs[2].events_since(0)] == ["running", "done"]
    q.close()


def test_queue_cancel_waiting_and_running_jobs_and_survive_a_failing_one():
    q, gates, ran = _gated_queue(max_waiting=2)
    running = Job(session="a", runs=[], steps=1, payload="run")
    waiting = Job(session="b", runs=[], steps=1, payload="wait")
    q.submit(running)
    _wait(lambda: running.state == "running")
    q.submit(waiting)
    boom = Job(session="c", runs=[], steps=1, payload="boom")
    q.submit(boom)
    with pytest.raises(QueueFullError, match="full"):
        q.submit(Job(session="d", runs=[], steps=1, payload="x"))
    q.cancel(waiting, "the page was closed")
    assert waiting.state == "cancelled" and "wait" not in ran  # dropped before it ran
    assert waiting.events_since(0)[-1] == {"type": "cancelled", "message": "the page was closed"}
    q.cancel(running, "cancelled on the page")
    assert running.wait(10) and running.state == "cancelled"
    assert boom.wait(10) and boom.state == "failed"  # it ran after the cancelled one; the worker lives on
    ok = Job(session="e", runs=[], steps=1, payload="ok")
    q.submit(ok)
    gates.setdefault("ok", threading.Event()).set()
    assert ok.wait(10) and ok.state == "done"
    assert ran == ["run", "boom", "ok"]
    q.close()


def test_failed_job_reports_its_message():
    q, _, _ = _gated_queue()
    job = Job(session="a", runs=[], steps=1, payload="boom")
    q.submit(job)
    assert job.wait(10) and job.state == "failed"
    assert job.events_since(0)[-1] == {"type": "failed", "message": "RuntimeError: kaputt"}
    with pytest.raises(JobCancelled):
        job._cancel.set()
        job.check_cancelled()
    q.close()


# ----------------------------------------------------------------------------------------------------------
# GANSpace cache and the engine.

def test_ganspace_is_fitted_once_per_model_and_a_broken_cache_is_refitted(tmp_path):
    from opstylegan.models.generator import Generator
    from opstylegan.pretrained import resolve_model
    from opstylegan.studio.engine import cached_ganspace

    G = Generator.from_pretrained(resolve_model("fmnist32-overparam"))
    fp = G.fingerprint()
    gs1, path, fitted = cached_ganspace(G, fp, tmp_path, num_components=4, num_samples=256)
    assert fitted and path.is_file() and path.parent == tmp_path / "ganspace" and fp[:32] in path.name
    gs2, path2, fitted2 = cached_ganspace(G, fp, tmp_path, num_components=4, num_samples=256)
    assert not fitted2 and path2 == path and torch.equal(gs1.components, gs2.components)
    path.write_bytes(b"not a safetensors file")
    gs3, _, fitted3 = cached_ganspace(G, fp, tmp_path, num_components=4, num_samples=256)
    assert fitted3 and torch.allclose(gs3.components, gs1.components)
    other = Generator.from_pretrained(resolve_model("fmnist32-baseline"))
    _, path_b, fitted_b = cached_ganspace(other, other.fingerprint(), tmp_path, num_components=4, num_samples=256)
    assert fitted_b and path_b != path  # keyed by the model


def test_engine_edits_and_space_meeting_keep_images(tmp_path):
    from opstylegan.latent import broadcast
    from opstylegan.studio import engine

    m = engine.load_studio_model("main", "fmnist32-overparam", torch.device("cpu"), tmp_path, num_samples=256)
    latent, space = engine.seed_latent(m, 3, 0.7)
    assert space == "W" and latent.shape == (1, m.G.rows, 64)
    same, s0 = engine.edit(m, latent, space, {}, None)
    assert s0 == "W" and torch.equal(same, latent)
    all_layers, s1 = engine.edit(m, latent, space, {0: 2.0}, range(m.G.num_ws))
    whole, s2 = engine.edit(m, latent, space, {0: 2.0}, None)
    assert s1 == s2 == "W" and torch.allclose(all_layers, whole)  # all layers: no need for W+
    some, s3 = engine.edit(m, latent, space, {0: 2.0}, range(0, 2))
    assert s3 == "W+" and not torch.allclose(engine.render(m, some, s3), engine.render(m, latent, space))
    expect = latent + 2.0 * m.ganspace.std[0] * m.ganspace.components[0]
    assert torch.allclose(whole, expect)
    wplus = broadcast(latent[:, 0], "w", "w+", num_ws=m.G.num_ws, rows=m.G.rows)
    a, b, common = engine.meet(m, latent, "W", wplus, "w+")
    assert common == "W+"
    assert torch.allclose(engine.render(m, a, common), engine.render(m, latent, "W"), atol=1e-5)
    assert torch.allclose(engine.render(m, b, common), engine.render(m, wplus, "w+"), atol=1e-5)


def test_prepare_target_refuses_bad_images_and_too_many_pixels():
    from opstylegan.data.images import ImageError
    from opstylegan.models.generator import Generator
    from opstylegan.pretrained import resolve_model
    from opstylegan.studio.engine import prepare_target

    G = Generator.from_pretrained(resolve_model("fmnist32-overparam"))
    rgb = io.BytesIO()
    Image.fromarray(np.full((50, 70, 3), 200, np.uint8)).save(rgb, format="JPEG")
    t = prepare_target(rgb.getvalue(), G, name="photo.jpg")
    assert t.shape == (1, 1, 32, 32) and t.dtype == torch.float32 and -1 <= t.min() <= t.max() <= 1
    with pytest.raises(ImageError, match="empty"):
        prepare_target(b"", G, name="empty.png")
    with pytest.raises(ImageError, match="not a recognised image"):
        prepare_target(b"hello", G, name="bad.png")
    big = io.BytesIO()
    Image.new("1", (8000, 6000)).save(big, format="PNG")  # 48M pixels, a few kB
    with pytest.raises(ImageError, match="more than the studio's limit"):
        prepare_target(big.getvalue(), G, name="bomb.png")


# ----------------------------------------------------------------------------------------------------------
# The HTTP app, served for real.

pytest.importorskip("starlette", reason="the studio extra is not installed (pip install 'opstylegan[studio]')")
pytest.importorskip("uvicorn", reason="the studio extra is not installed (pip install 'opstylegan[studio]')")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from opstylegan.studio.app import ServerThread

    studio = make_studio(tmp_path_factory.mktemp("cache"), max_upload_bytes=300_000, max_steps=50,
                         unwatched_grace=60.0)
    studio.preload()
    with ServerThread(studio) as url:
        yield url, studio
    studio.close()


def test_page_is_self_contained_and_says_so_to_the_browser(server):
    url, _ = server
    c = Client(url)
    status, headers, page = c.request("/")
    assert status == 200 and b"opstylegan studio" in page
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    for name in ("index.html", "studio.js", "studio.css"):
        text = (STATIC / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
        assert "@import" not in text and "@font-face" not in text, name
    assert c.request("/static/studio.js")[0] == 200
    assert c.request("/static/../engine.py")[0] == 404
    # DNS rebinding: a page of another site that resolves to 127.0.0.1 sends its own Host header.
    req = urllib.request.Request(url, headers={"Host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400


def test_bad_uploads_get_a_message_and_the_server_keeps_serving(server):
    url, _ = server
    c = Client(url)
    code, msg = c.error("/api/targets", body=b"this is not an image", headers={"X-Filename": "notes.png"})
    assert code == 400 and msg == "cannot use notes.png: not a recognised image format (corrupt, or not an image)"
    good = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(good, format="PNG")
    code, msg = c.error("/api/targets", body=good.getvalue()[:60], headers={"X-Filename": "cut.png"})
    assert code == 400 and "cut.png" in msg
    code, msg = c.error("/api/targets", body=b"", headers={"X-Filename": "empty.png"})
    assert code == 400 and "empty" in msg
    code, msg = c.error("/api/targets", body=b"\0" * 400_000, headers={"X-Filename": "huge.png"})
    assert code == 413 and "accepts" in msg
    code, msg = c.error("/api/targets?example=../../secret.png")
    assert code == 404 and "unknown example" in msg
    status, _, body = c.request("/api/targets", method="POST", body=good.getvalue(),
                                headers={"X-Filename": "black.png"})
    assert status == 200 and json.loads(body)["name"] == "black.png"
    stranger = Client.__new__(Client)
    stranger.url, stranger.session = c.url, "not-a-session"
    assert stranger.error("/api/targets?example=fmnist-test-00000.png")[0] == 410


def test_invert_streams_progress_and_gives_cli_loadable_latents(server, tmp_path):
    from opstylegan.inversion.latents_io import load_latent
    from opstylegan.models.generator import Generator
    from opstylegan.pretrained import resolve_model

    url, studio = server
    c = Client(url)
    target = c.post_json("/api/targets?example=fmnist-test-00000.png")
    code, msg = c.error("/api/invert", {"target": target["id"], "runs": [{"model": "baseline", "space": "W"}],
                                        "steps": 3})
    assert code == 400 and "not available" in msg and "['w+', 'w']" in msg
    code, msg = c.error("/api/invert", {"target": target["id"], "runs": [{"model": "main", "space": "W"}],
                                        "steps": 51})
    assert "steps must be an integer in [1, 50]" in msg
    runs = [{"model": "baseline", "space": "w+"}, {"model": "main", "space": "W"}]
    job = c.post_json("/api/invert", {"target": target["id"], "runs": runs, "steps": 3})
    code, msg = c.error("/api/invert", {"target": target["id"], "runs": runs, "steps": 3})
    assert code == 409 and "already has an inversion" in msg
    events = c.events(job["job"])
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "done", events[-1]
    progress = [e for e in events if e["type"] == "progress"]
    assert [(e["run"], e["step"]) for e in progress] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
    assert png_image(__import__("base64").b64decode(progress[0]["image"])).shape == (32, 32)
    results = [e for e in events if e["type"] == "result"]
    assert [(r["model"], r["space"]) for r in results] == [("baseline", "w+"), ("main", "W")]
    for r in results:
        assert len(r["curve"]) == 3 and 0 < r["lpips"] < 1 and r["psnr"] > 0
        status, headers, blob = c.request(f"/api/latents/{r['id']}.safetensors?s={c.session}")
        assert status == 200 and "attachment" in headers["content-disposition"]
        path = tmp_path / f"{r['model']}.safetensors"
        path.write_bytes(blob)
        G = Generator.from_pretrained(resolve_model(f"fmnist32-{'overparam' if r['model'] == 'main' else 'baseline'}"))
        lf = load_latent(path, G)  # refused for any other model
        assert lf.space == r["space"] and lf.metadata["source"] == "fmnist-test-00000.png"
        status, _, png = c.request(f"/api/latents/{r['id']}.png")
        assert status == 200 and png_image(png).shape == (32, 32)
    listed = json.loads(c.request("/api/latents")[2])["latents"]
    assert {x["id"] for x in listed} == {r["id"] for r in results}
    other = Client(url)  # sessions are separate
    assert other.request(f"/api/latents/{results[0]['id']}.png")[0] == 404
    assert json.loads(other.request("/api/latents")[2])["latents"] == []


def test_edit_sample_and_interpolate(server):
    url, _ = server
    c = Client(url)
    src = {"model": "main", "seed": 5, "truncation": 0.7}
    base = png_image(c.post_json("/api/edit", {"source": src, "sigmas": {}}))
    moved = png_image(c.post_json("/api/edit", {"source": src, "sigmas": {"0": 4.0}, "layers": "0-7"}))
    early = png_image(c.post_json("/api/edit", {"source": src, "sigmas": {"0": 4.0}, "layers": "0-1"}))
    assert base.shape == (32, 32) and not np.array_equal(base, moved) and not np.array_equal(moved, early)
    assert "components 0-7" in c.error("/api/edit", {"source": src, "sigmas": {"9": 1}})[1]
    assert "sigma of component 0 must be a number in [-10.0, 10.0]" in c.error(
        "/api/edit", {"source": src, "sigmas": {"0": 99}})[1]
    assert "outside [0, 7]" in c.error("/api/edit", {"source": src, "sigmas": {}, "layers": "3-9"})[1]
    assert "truncation_psi must be a number" in c.error("/api/edit", {"source": {**src, "truncation": 5}})[1]
    assert "unknown model" in c.error("/api/sample", {"model": "nope"})[1]
    grid = png_image(c.post_json("/api/sample", {"model": "baseline", "seeds": "0-3", "truncation": 0.5}))
    assert grid.shape == (32, 128)
    assert "at most 16 seeds" in c.error("/api/sample", {"seeds": "0-99"})[1]
    assert "bad seed item" in c.error("/api/sample", {"seeds": "a-b"})[1]
    a, b = {"model": "main", "seed": 1, "truncation": 0.7}, {"model": "main", "seed": 2, "truncation": 0.7}
    start = png_image(c.post_json("/api/interpolate", {"a": a, "b": b, "t": 0.0}))
    assert np.array_equal(start, png_image(c.post_json("/api/edit", {"source": a})))
    strip = png_image(c.post_json("/api/interpolate", {"a": a, "b": b, "steps": 5}))
    assert strip.shape == (32, 160) and np.array_equal(strip[:, :32], start)
    gif = c.post_json("/api/interpolate.gif", {"a": a, "b": b, "steps": 4})
    assert gif[:6] == b"GIF89a" and Image.open(io.BytesIO(gif)).n_frames == 6  # 4 frames, then back (pingpong)
    mixed = c.error("/api/interpolate", {"a": a, "b": {**b, "model": "baseline"}, "t": 0.5})[1]
    assert "interpolate latents of one model" in mixed


def test_queue_position_is_shown_and_a_closed_page_cancels_its_job(server):
    url, studio = server
    first, second = Client(url), Client(url)
    t1 = first.post_json("/api/targets?example=fmnist-test-00001.png")
    t2 = second.post_json("/api/targets?example=fmnist-test-00002.png")
    one = [{"model": "main", "space": "W"}]
    j1 = first.post_json("/api/invert", {"target": t1["id"], "runs": one, "steps": 50})
    j2 = second.post_json("/api/invert", {"target": t2["id"], "runs": one, "steps": 50})
    assert j2["position"] >= 1
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    conn1 = http.client.HTTPConnection(host, int(port), timeout=120)
    conn1.request("GET", f"/api/jobs/{j1['job']}/events?s={first.session}")
    stream1 = iter_sse(conn1.getresponse())
    conn2 = http.client.HTTPConnection(host, int(port), timeout=120)
    conn2.request("GET", f"/api/jobs/{j2['job']}/events?s={second.session}")
    ev = next(iter_sse(conn2.getresponse()))
    assert ev == {"type": "queue", "position": 1}
    conn2.close()  # the second tab is closed while it waits: its job leaves the queue
    job2 = studio.session(second.session).job
    assert job2.wait(30) and job2.state == "cancelled" and job2.cancel_reason == "the page was closed"
    for ev in stream1:
        if ev["type"] == "progress":
            break
    conn1.close()  # the first tab is closed while its job runs: it stops after the current step
    job1 = studio.session(first.session).job
    assert job1.wait(60) and job1.state == "cancelled"
    assert max(e.get("step", 0) for e in job1.events_since(0)) < 50


# ----------------------------------------------------------------------------------------------------------
# The command.

def test_studio_command_prints_the_url_and_warns_off_loopback(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from opstylegan.cli.main import cli
    from opstylegan.studio import app

    served = {}

    def fake_serve(studio, host, port, *, on_ready):  # the real server is exercised by the fixture above
        served.update(studio=studio, host=host, port=port)
        on_ready(app.url_for(host, port))
        studio.close()

    monkeypatch.setattr(app, "serve", fake_serve)
    r = CliRunner().invoke(cli, ["studio", "--no-baseline", "--host", "0.0.0.0", "--port", "7861",
                                 "--cache-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "opstylegan studio: open http://127.0.0.1:7861/" in r.output
    assert "WARNING: listening on 0.0.0.0: anyone who can reach this machine on port 7861" in r.output
    assert served["host"] == "0.0.0.0" and list(served["studio"].models) == ["main"]
    assert list((tmp_path / "ganspace").glob("*.safetensors"))  # fitted into the cache
    r = CliRunner().invoke(cli, ["studio", "--cache-dir", str(tmp_path)])  # defaults: both shipped models, local
    assert r.exit_code == 0 and "WARNING" not in r.output and "open http://127.0.0.1:7860/" in r.output
    assert list(served["studio"].models) == ["main", "baseline"] and served["host"] == "127.0.0.1"


def test_studio_command_refuses_contradictions():
    from click.testing import CliRunner

    from opstylegan.cli.main import cli

    r = CliRunner().invoke(cli, ["studio", "--baseline", "fmnist32-baseline", "--no-baseline"])
    assert r.exit_code == 2 and "contradict" in r.output
    r = CliRunner().invoke(cli, ["studio", "--model", "no/such/model"])
    assert r.exit_code == 2 and "neither a model folder nor a shipped model" in r.output


def test_a_job_that_no_page_follows_is_cancelled(server):
    url, studio = server
    c = Client(url)
    target = c.post_json("/api/targets?example=fmnist-test-00003.png")
    studio.unwatched_grace = 0.0  # no event stream will be opened for this job
    try:
        c.post_json("/api/invert", {"target": target["id"], "runs": [{"model": "main", "space": "W"}], "steps": 50})
        job = studio.session(c.session).job
        assert job.wait(120) and job.state == "cancelled"
        assert job.cancel_reason is None and "no page followed this job" in job.events_since(0)[-1]["message"]
    finally:
        studio.unwatched_grace = 60.0
