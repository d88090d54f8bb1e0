"""The studio's web side: a Starlette app with one hand-written page (static/), JSON and image endpoints, and a
server-sent-event stream per inversion job; served by uvicorn.

Offline by construction: the page and its script and style come from this package, every response carries a
Content-Security-Policy that lets the browser load nothing from any other origin (no CDN, font, analytics or
update check can even be attempted), and the server itself makes no outgoing connection. Bound to a loopback
address, the app also refuses requests whose Host header is not a loopback name (DNS rebinding).

Sessions: ``POST /api/session`` returns a random id that the page sends back (header ``X-Studio-Session``, or
``?s=`` where a browser cannot set headers: downloads and the event stream). A job's event stream is the
page's presence: when it closes (tab closed, page reloaded), the job is cancelled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opstylegan.studio.service import Studio, StudioError, example_bytes

__all__ = ["CSP", "LOOPBACK_HOSTS", "ServerThread", "create_app", "is_loopback", "serve"]

log = logging.getLogger("opstylegan.studio")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "font-src 'none'; object-src 'none'; media-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; "
       "form-action 'none'")
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"), (b"cross-origin-opener-policy", b"same-origin"),
                    (b"cross-origin-resource-policy", b"same-origin")]
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
STATIC = {"index.html": "text/html; charset=utf-8", "studio.js": "text/javascript; charset=utf-8",
          "studio.css": "text/css; charset=utf-8"}
MAX_JSON_BYTES = 64 * 1024
# Renders (edits, samples, interpolations) run one at a time, beside the one inversion: under many editing clients
# the inversion worker keeps about half of the CPU instead of a third, and more threads only fight over cores.
RENDER_THREADS = 1


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    return host in ("localhost", "::1") or host.startswith("127.")


class SecurityHeaders:
    """Adds the CSP and friends to every HTTP response (pure ASGI, so streams pass through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _static(name: str) -> bytes:
    return (resources.files("opstylegan.studio") / "static" / name).read_bytes()


def create_app(studio: Studio, *, host: str = "127.0.0.1") -> Starlette:
    """The ASGI app over ``studio``; ``host`` is the address it is served on (loopback: Host header checked)."""
    limiter = anyio.CapacityLimiter(RENDER_THREADS)

    async def work(fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)

    def sid(request: Request) -> str | None:
        return request.headers.get("x-studio-session") or request.query_params.get("s")

    async def body_json(request: Request) -> dict[str, Any]:
        raw = await _read_body(request, MAX_JSON_BYTES, "request")
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            raise StudioError("the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise StudioError("the request body must be a JSON object")
        return data

    def png(data: bytes) -> Response:
        return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})

    async def page(request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        if name not in STATIC:
            raise StudioError(f"no such file: {name}", 404)
        return Response(_static(name), media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    async def new_session(request: Request) -> Response:
        s = studio.new_session()
        return JSONResponse({"session": s.id, **studio.info()})

    async def example(request: Request) -> Response:
        return Response(example_bytes(request.path_params["name"]), media_type="image/png")

    async def add_target(request: Request) -> Response:
        s = studio.session(sid(request))
        name = request.query_params.get("example")
        if name is not None:
            data = example_bytes(name)
        else:
            name = (request.headers.get("x-filename") or "upload")[:200]
            data = await _read_body(request, studio.max_upload_bytes, name)
        t = await work(studio.add_target, s, data, name)
        return JSONResponse({"id": t.id, "name": t.name})

    async def target_png(request: Request) -> Response:
        s = studio.session(sid(request))
        return png(studio.target(s, request.path_params["tid"]).png)

    async def invert(request: Request) -> Response:
        s = studio.session(sid(request))
        data = await body_json(request)
        job, position = studio.submit_inversion(s, data.get("target"), data.get("runs"), data.get("steps"))
        return JSONResponse({"job": job.id, "position": position})

    async def cancel(request: Request) -> Response:
        s = studio.session(sid(request))
        job = studio.job(s, request.path_params["jid"])
        studio.queue.cancel(job, "cancelled on the page")
        return JSONResponse({"job": job.id, "state": job.state})

    async def events(request: Request) -> Response:
        s = studio.session(sid(request))
        job = studio.job(s, request.path_params["jid"])
        return StreamingResponse(_job_stream(studio, job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def latents(request: Request) -> Response:
        s = studio.session(sid(request))
        return JSONResponse({"latents": [r.info() for r in reversed(list(s.latents.values()))]})  # a snapshot

    async def latent_file(request: Request) -> Response:
        s = studio.session(sid(request))
        rec = studio.latent(s, request.path_params["lid"])
        stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in rec.name).strip("-")
        if request.path_params["ext"] == "safetensors":
            return Response(rec.safetensors, media_type="application/octet-stream",
                            headers={"Content-Disposition": f'attachment; filename="{stem}.safetensors"'})
        return Response(rec.png, media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="{stem}.png"'})

    async def edit(request: Request) -> Response:
        s = studio.session(sid(request))
        d = await body_json(request)
        return png(await work(studio.edit_png, s, d.get("source"), d.get("sigmas", {}), d.get("layers")))

    async def sample(request: Request) -> Response:
        studio.session(sid(request))
        d = await body_json(request)
        return png(await work(studio.sample_png, d.get("model", "main"), d.get("seeds", "0-7"),
                              d.get("truncation", 1.0)))

    async def interpolate(request: Request) -> Response:
        s = studio.session(sid(request))
        d = await body_json(request)
        if request.path_params.get("ext") == "gif":
            gif = await work(studio.interpolate_gif, s, d.get("a"), d.get("b"), d.get("steps", 16))
            return Response(gif, media_type="image/gif",
                            headers={"Content-Disposition": 'attachment; filename="interpolation.gif"'})
        return png(await work(studio.interpolate_png, s, d.get("a"), d.get("b"), d.get("t"), d.get("steps")))

    async def studio_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StudioError)
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the server log has the details"},
                            status_code=500)

    routes = [
        Route("/", page),
        Route("/static/{name}", page),
        Route("/api/session", new_session, methods=["POST"]),
        Route("/api/examples/{name}", example),
        Route("/api/targets", add_target, methods=["POST"]),
        Route("/api/targets/{tid}.png", target_png),
        Route("/api/invert", invert, methods=["POST"]),
        Route("/api/jobs/{jid}/events", events),
        Route("/api/jobs/{jid}/cancel", cancel, methods=["POST"]),
        Route("/api/latents", latents),
        Route("/api/latents/{lid}.{ext:str}", latent_file),
        Route("/api/edit", edit, methods=["POST"]),
        Route("/api/sample", sample, methods=["POST"]),
        Route("/api/interpolate", interpolate, methods=["POST"]),
        Route("/api/interpolate.{ext:str}", interpolate, methods=["POST"]),
    ]
    middleware = [Middleware(SecurityHeaders)]
    if is_loopback(host):
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1"]))
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={StudioError: studio_error, Exception: internal_error})


async def _read_body(request: Request, limit: int, name: str) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise StudioError(f"{name}: {int(declared) / 2**20:.1f} MiB is more than the {limit / 2**20:.2g} MiB "
                          f"the studio accepts", 413)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise StudioError(f"{name}: more than the {limit / 2**20:.2g} MiB the studio accepts", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


async def _job_stream(studio: Studio, job: Any, *, poll: float = 0.1, keepalive: float = 1.0) -> AsyncIterator[bytes]:
    """The job's events as server-sent events, with its queue position while it waits. Closing the stream
    (the page went away) cancels the job."""
    index, last_position, last_sent = 0, -1, 0.0
    job.listeners += 1
    try:
        while True:
            position = studio.queue.position(job)
            if position is not None and position != last_position and job.state == "queued":
                last_position = position
                yield _sse({"type": "queue", "position": position})
                last_sent = time.monotonic()
            events = job.events_since(index)
            index += len(events)
            for ev in events:
                yield _sse(ev)
                last_sent = time.monotonic()
            if job.finished and not job.events_since(index):
                return
            if time.monotonic() - last_sent > keepalive:
                yield b": keepalive\n\n"  # a write to a closed connection is how a closed tab is noticed
                last_sent = time.monotonic()
            await asyncio.sleep(poll)
    finally:
        job.listeners -= 1
        job.last_listened = time.monotonic()
        if not job.finished and job.listeners == 0:
            studio.queue.cancel(job, "the page was closed")


# ----------------------------------------------------------------------------------------------------------
# Serving.

def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({e.strerror or e}); is another studio running? "
                      f"choose another --port") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def url_for(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    return f"http://{f'[{shown}]' if ':' in shown and not shown.startswith('[') else shown}:{port}/"


def serve(studio: Studio, host: str = "127.0.0.1", port: int = 7860, *,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the studio until interrupted (Ctrl-C); ``on_ready(url)`` runs once the socket listens."""
    import uvicorn

    sock = _bind(host, port)
    app = create_app(studio, host=host)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    if on_ready is not None:
        on_ready(url_for(host, sock.getsockname()[1]))
    try:
        server.run(sockets=[sock])
    finally:
        studio.close()
        sock.close()


class ServerThread:
    """The studio served from a background thread (tests, benchmarks): ``with ServerThread(studio) as url: ...``.

    ``port=0`` picks a free port; :attr:`url` is known once the context is entered.
    """

    def __init__(self, studio: Studio, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.studio = studio
        self._sock = _bind(host, port)
        self.url = url_for(host, self._sock.getsockname()[1])
        config = uvicorn.Config(create_app(studio, host=host), log_level="warning", access_log=False,
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not the main thread
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True,
                                        name="studio-server")

    def __enter__(self) -> str:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the studio server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self._sock.close()

