"""What the studio does for a browser session, independent of HTTP: targets, inversion jobs, and the images of
edits, samples and interpolations. :mod:`opstylegan.studio.app` only parses requests and calls :class:`Studio`.

State is per session (one per browser tab): its targets, its inverted latents (newest kept, oldest dropped
past ``max_items``) and at most one inversion job. Sessions idle for ``session_ttl`` seconds are dropped, and
at most ``max_sessions`` exist (the least recently seen idle one makes room). User mistakes raise
:class:`StudioError` with a message for the page; nothing here prints.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from opstylegan.data.images import ImageError
from opstylegan.editing.ganspace import parse_layers
from opstylegan.latent import LatentError
from opstylegan.models.generator import check_truncation
from opstylegan.studio import engine
from opstylegan.studio.engine import StudioModel
from opstylegan.studio.jobs import Job, JobCancelled, JobQueue, QueueFullError, RunSpec

__all__ = ["LatentRecord", "Session", "Studio", "StudioError", "Target", "example_names"]

log = logging.getLogger("opstylegan.studio")

MAX_SEEDS_PER_SAMPLE = 16
MAX_STRIP = 16
MAX_SIGMA = 10.0


class StudioError(Exception):
    """A request the studio refuses; ``status`` is the HTTP status the page receives with ``message``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(eq=False)
class Target:
    id: str
    name: str
    image: torch.Tensor  # [1, C, H, W] in [-1, 1]
    png: bytes


@dataclass(eq=False)
class LatentRecord:
    """An inverted latent of a session: ``latent`` is ``[1, *shape]`` (CPU) in ``space`` of model ``model``."""

    id: str
    name: str
    model: str
    space: str
    latent: torch.Tensor
    png: bytes
    target: str
    lpips: float
    psnr: float
    steps: int
    encoder_start: bool
    safetensors: bytes = field(repr=False, default=b"")

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "model": self.model, "space": self.space, "target": self.target,
                "lpips": self.lpips, "psnr": self.psnr, "steps": self.steps, "encoder_start": self.encoder_start}


@dataclass(eq=False)
class Session:
    id: str
    created: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)
    targets: collections.OrderedDict[str, Target] = field(default_factory=collections.OrderedDict)
    latents: collections.OrderedDict[str, LatentRecord] = field(default_factory=collections.OrderedDict)
    job: Job | None = None

    @property
    def busy(self) -> bool:
        return self.job is not None and not self.job.finished


def example_names() -> list[str]:
    """The bundled example targets (PNG file names)."""
    folder = resources.files("opstylegan.studio") / "examples"
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".png"))


def example_bytes(name: str) -> bytes:
    if name not in example_names():
        raise StudioError(f"unknown example {name!r}; the examples are {example_names()}", 404)
    return (resources.files("opstylegan.studio") / "examples" / name).read_bytes()


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise StudioError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _float(value: Any, name: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise StudioError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


class Studio:
    """The studio's state and operations over one or two loaded models on one device.

    Args:
        models: ``{"main": ..., "baseline": ...}`` (baseline optional), on the same device, with one image size.
        lpips: The LPIPS module for inversions (default: VGG LPIPS, loaded on first use or by :meth:`preload`).
        max_steps: Largest step count a page may ask for.
        live_every: Live-view interval in steps (default: about 40 views per run, at least every 2 steps).
        max_waiting: Inversion jobs allowed to wait at once (one runs at a time per device).
        max_sessions, session_ttl, max_items: Session limits (see the module docstring).
        max_upload_bytes: Largest upload accepted.
        unwatched_grace: A running job that no page has followed (event stream) for this long is cancelled.
    """

    def __init__(self, models: dict[str, StudioModel], *, lpips: torch.nn.Module | None = None,
                 max_steps: int = 2000, live_every: int | None = None, max_waiting: int = 32,
                 max_sessions: int = 256, session_ttl: float = 3600.0, max_items: int = 32,
                 max_upload_bytes: int = 20 * 2**20, unwatched_grace: float = 15.0) -> None:
        if "main" not in models:
            raise ValueError("models needs a 'main' entry")
        main = models["main"].G
        for m in models.values():
            G = m.G
            if (G.img_resolution, G.img_channels) != (main.img_resolution, main.img_channels):
                raise ValueError(f"{m.name!r} makes {G.img_channels}x{G.img_resolution}px images and "
                                 f"{models['main'].name!r} {main.img_channels}x{main.img_resolution}px; the studio "
                                 f"compares models on the same targets, so they must match")
            if G.w_avg.device != main.w_avg.device:
                raise ValueError("all studio models must be on one device")
        self.models = models
        self.device = main.w_avg.device
        self._lpips = lpips
        self._lpips_lock = threading.Lock()
        self.max_steps = max_steps
        self.live_every = live_every
        self.max_sessions = max_sessions
        self.session_ttl = session_ttl
        self.max_items = max_items
        self.max_upload_bytes = max_upload_bytes
        self.unwatched_grace = unwatched_grace
        self._sessions: dict[str, Session] = {}
        self._sessions_lock = threading.Lock()
        self.queue = JobQueue(self._execute, max_waiting=max_waiting, name=str(self.device))

    # -- life cycle -------------------------------------------------------------------------------------------
    def lpips(self) -> torch.nn.Module:
        with self._lpips_lock:
            if self._lpips is None:
                from opstylegan.inversion.projector import default_lpips

                self._lpips = default_lpips(self.device).eval()
            return self._lpips

    def preload(self) -> None:
        """Load the LPIPS weights now, and build one throw-away Adam optimizer: torch's first optimizer imports
        its compiler stack, which takes seconds to tens of seconds on a busy CPU. Otherwise the first
        inversion pays both."""
        self.lpips()
        torch.optim.Adam([torch.zeros(1, requires_grad=True)])

    def close(self) -> None:
        self.queue.close()

    def info(self) -> dict[str, Any]:
        return {"models": [m.info() for m in self.models.values()], "examples": example_names(),
                "max_steps": self.max_steps, "device": str(self.device), "max_upload_bytes": self.max_upload_bytes,
                "encoder_starts": engine.projector_takes_start()}

    # -- sessions ----------------------------------------------------------------------------------------------
    def new_session(self) -> Session:
        now = time.monotonic()
        with self._sessions_lock:
            for sid, s in list(self._sessions.items()):
                if now - s.seen > self.session_ttl and not s.busy:
                    del self._sessions[sid]
            if len(self._sessions) >= self.max_sessions:
                idle = [s for s in self._sessions.values() if not s.busy]
                if not idle:
                    raise StudioError("the studio has too many open sessions; close some tabs and reload", 503)
                del self._sessions[min(idle, key=lambda s: s.seen).id]
            s = Session(secrets.token_urlsafe(16))
            self._sessions[s.id] = s
            return s

    def session(self, sid: str | None) -> Session:
        with self._sessions_lock:
            s = self._sessions.get(sid or "")
            if s is None:
                raise StudioError("unknown or expired session; reload the page", 410)
            s.seen = time.monotonic()
            return s

    def session_count(self) -> int:
        with self._sessions_lock:
            return len(self._sessions)

    def _keep(self, store: collections.OrderedDict[str, Any], key: str, item: Any) -> None:
        store[key] = item
        while len(store) > self.max_items:
            store.popitem(last=False)

    def model(self, key: Any) -> StudioModel:
        if key not in self.models:
            raise StudioError(f"unknown model {key!r}; this studio serves {list(self.models)}")
        return self.models[key]

    # -- targets -----------------------------------------------------------------------------------------------
    def add_target(self, s: Session, data: bytes, name: str) -> Target:
        """Decode an upload through the project's image reader; a bad file raises StudioError naming why."""
        if len(data) > self.max_upload_bytes:
            raise StudioError(f"{name}: the file is {len(data) / 2**20:.1f} MiB; the studio accepts images up to "
                              f"{self.max_upload_bytes / 2**20:.0f} MiB", 413)
        try:
            image = engine.prepare_target(data, self.models["main"].G, name=name)
        except ImageError as e:
            raise StudioError(f"cannot use {e.path}: {e.reason}") from None
        t = Target(secrets.token_hex(6), name, image, engine.png_bytes(image))
        self._keep(s.targets, t.id, t)
        return t

    def target(self, s: Session, tid: Any) -> Target:
        if not isinstance(tid, str) or tid not in s.targets:
            raise StudioError("unknown target: upload an image or pick an example first", 404)
        return s.targets[tid]

    # -- inversion ---------------------------------------------------------------------------------------------
    def submit_inversion(self, s: Session, target_id: Any, runs: Any, steps: Any) -> tuple[Job, int]:
        """Queue the inversions of one target (``runs``: ``[{"model": key, "space": s}, ...]``, 1 or 2)."""
        target = self.target(s, target_id)
        steps = _int(steps, "steps", 1, self.max_steps)
        if not isinstance(runs, list) or not 1 <= len(runs) <= 2:
            raise StudioError("runs must list one or two inversions, e.g. [{\"model\": \"main\", \"space\": \"W\"}]")
        specs = []
        for r in runs:
            if not isinstance(r, dict):
                raise StudioError(f"each run must be an object with model and space, got {r!r}")
            m = self.model(r.get("model"))
            if r.get("space") not in m.spaces:
                raise StudioError(f"space {r.get('space')!r} is not available for {m.name!r}; choose from {m.spaces}")
            specs.append(RunSpec(m.key, r["space"]))
        if s.busy:
            raise StudioError("this tab already has an inversion queued or running; cancel it or wait", 409)
        job = Job(session=s.id, runs=specs, steps=steps, payload=(s, target))
        try:
            position = self.queue.submit(job)
        except QueueFullError as e:
            raise StudioError(str(e), 503) from None
        s.job = job
        return job, position

    def job(self, s: Session, jid: str) -> Job:
        if s.job is None or s.job.id != jid:
            raise StudioError(f"unknown job {jid!r} for this session", 404)
        return s.job

    def _execute(self, job: Job) -> None:
        import base64

        s, target = job.payload
        lpips = self.lpips()

        def check() -> None:
            job.check_cancelled()
            if job.listeners == 0 and time.monotonic() - job.last_listened > self.unwatched_grace:
                raise JobCancelled(f"no page followed this job for {self.unwatched_grace:.0f} s")
        every = self.live_every or max(2, job.steps // 40)
        for index, run in enumerate(job.runs):
            m = self.models[run.model]

            def view(step: int, steps: int, value: float, image: torch.Tensor, index: int = index) -> None:
                png = base64.b64encode(engine.png_bytes(image)).decode("ascii")
                job.post("progress", run=index, step=step, steps=steps, lpips=value, image=png)

            result, from_encoder = engine.invert_live(m, target.image, run.space, job.steps, lpips, every=every,
                                                      on_view=view, check_cancelled=check)
            rec = self._record(target, m, run.space, result, from_encoder)
            self._keep(s.latents, rec.id, rec)
            job.post("result", run=index, curve=[float(x) for x in result.lpips_per_step[:, 0]], **rec.info())

    def _record(self, target: Target, m: StudioModel, space: str, result: Any, from_encoder: bool) -> LatentRecord:
        import tempfile

        from opstylegan.inversion.latents_io import save_latent

        lid = secrets.token_hex(6)
        stem = Path(target.name).stem or "target"
        latent = result.latents[:1].contiguous()  # [1, *shape]
        meta = {"source": target.name, "steps": result.options.steps, "lpips": f"{float(result.lpips[0]):.6f}",
                "psnr": f"{float(result.psnr[0]):.4f}", "model": m.name, "made_by": "opstylegan studio"}
        with tempfile.TemporaryDirectory(prefix="opstylegan-studio-") as tmp:  # the one latent-file writer
            blob = save_latent(Path(tmp) / "latent.safetensors", latent[0], space=space, fingerprint=m.fingerprint,
                               metadata=meta).read_bytes()
        return LatentRecord(lid, f"{stem} {space} ({m.key})", m.key, space, latent, engine.png_bytes(result.images[:1]),
                            target.id, float(result.lpips[0]), float(result.psnr[0]), result.options.steps,
                            from_encoder, blob)

    def latent(self, s: Session, lid: Any) -> LatentRecord:
        if not isinstance(lid, str) or lid not in s.latents:
            raise StudioError("unknown latent: invert an image first (or it was dropped as one of the oldest)", 404)
        return s.latents[lid]

    # -- sources: an inverted latent, or a seed ------------------------------------------------------------------
    def source(self, s: Session, src: Any) -> tuple[StudioModel, torch.Tensor, str]:
        """``{"latent": id}`` or ``{"model": key, "seed": n, "truncation": psi}``
        -> ``(model, latent [1, *shape], space)``."""
        if not isinstance(src, dict):
            raise StudioError(f"a source must be {{'latent': id}} or {{'model', 'seed', 'truncation'}}, got {src!r}")
        if "latent" in src:
            rec = self.latent(s, src["latent"])
            return self.models[rec.model], rec.latent, rec.space
        m = self.model(src.get("model", "main"))
        seed = _int(src.get("seed"), "seed", 0, 2**32 - 1)
        psi = self._truncation(src.get("truncation", 1.0))
        latent, space = engine.seed_latent(m, seed, psi)
        return m, latent, space

    @staticmethod
    def _truncation(psi: Any) -> float:
        if isinstance(psi, bool) or not isinstance(psi, (int, float)):
            raise StudioError(f"truncation must be a number, got {psi!r}")
        try:
            return check_truncation(psi)
        except ValueError as e:
            raise StudioError(str(e)) from None

    # -- images ------------------------------------------------------------------------------------------------
    def edit_png(self, s: Session, src: Any, sigmas: Any, layers: Any) -> bytes:
        """The source's image moved along GANSpace components: ``sigmas`` ``{k: sigma}``, ``layers`` ``"a-b"``."""
        m, latent, space = self.source(s, src)
        k_max = m.ganspace.num_components - 1
        if not isinstance(sigmas, dict):
            raise StudioError(f"sigmas must map component numbers to numbers, got {sigmas!r}")
        parsed: dict[int, float] = {}
        for k, v in sigmas.items():
            try:
                kk = int(k)
            except (TypeError, ValueError):
                kk = -1
            if not 0 <= kk <= k_max:
                raise StudioError(f"component {k!r} does not exist; this model has components 0-{k_max}")
            parsed[kk] = _float(v, f"sigma of component {kk}", -MAX_SIGMA, MAX_SIGMA)
        layer_range = None
        if layers is not None:
            try:
                layer_range = parse_layers(str(layers), m.G.num_ws)
            except ValueError as e:
                raise StudioError(str(e)) from None
        edited, out_space = engine.edit(m, latent, space, parsed, layer_range)
        return engine.png_bytes(engine.render(m, edited, out_space))

    def sample_png(self, model: Any, seeds: Any, truncation: Any) -> bytes:
        m = self.model(model)
        from opstylegan.cli.common import parse_seeds

        try:
            seed_list = parse_seeds(str(seeds))
        except ValueError as e:
            raise StudioError(str(e)) from None
        if len(seed_list) > MAX_SEEDS_PER_SAMPLE:
            raise StudioError(f"at most {MAX_SEEDS_PER_SAMPLE} seeds at a time, got {len(seed_list)}")
        latents, space = engine.seed_latents(m, seed_list, self._truncation(truncation))
        images = engine.render(m, latents, space)
        return engine.png_bytes(images, ncols=min(8, len(seed_list)))

    def _pair(self, s: Session, a: Any, b: Any) -> tuple[StudioModel, torch.Tensor, torch.Tensor, str]:
        ma, la, sa = self.source(s, a)
        mb, lb, sb = self.source(s, b)
        if ma is not mb:
            raise StudioError(f"A belongs to {ma.name!r} and B to {mb.name!r}: interpolate latents of one model")
        try:
            la, lb, space = engine.meet(ma, la, sa, lb, sb)
        except (KeyError, LatentError) as e:
            raise StudioError(f"cannot interpolate a {sa!r} with a {sb!r} latent ({e})") from None
        return ma, la, lb, space

    def interpolate_png(self, s: Session, a: Any, b: Any, t: Any = None, steps: Any = None) -> bytes:
        """One frame at ``t`` in [0, 1], or (``steps``) the strip of ``steps`` frames from A to B."""
        m, la, lb, space = self._pair(s, a, b)
        if steps is not None:
            n = _int(steps, "steps", 2, MAX_STRIP)
            ts = [i / (n - 1) for i in range(n)]
        else:
            ts = [_float(t, "t", 0.0, 1.0)]
        return engine.png_bytes(engine.interpolation(m, la, lb, space, ts))

    def interpolate_gif(self, s: Session, a: Any, b: Any, steps: Any = 16) -> bytes:
        m, la, lb, space = self._pair(s, a, b)
        n = _int(steps, "steps", 2, 64)
        return engine.gif_bytes(engine.interpolation(m, la, lb, space, [i / (n - 1) for i in range(n)]))
