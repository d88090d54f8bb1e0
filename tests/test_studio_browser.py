"""`opstylegan studio` in a real browser: Debian's Chromium, headless, driven by Playwright (never Playwright's
own browser download). Skipped with the reason when Chromium or Playwright is missing; `scripts/setup.sh`
installs both where it runs as root, so CI runs it.

The page is opened, an example is inverted side by side (baseline w+ | overparam W, a few steps), a GANSpace
slider is moved and the image must change, two latents are interpolated and the GIF downloaded, a corrupt
upload must show its message, and every request the page made must have gone to the studio itself.
Screenshots of the views go to a temporary folder, or to $OPSTYLEGAN_STUDIO_SCREENSHOTS when set (the README's
pictures: OPSTYLEGAN_STUDIO_SCREENSHOTS=docs/studio OPSTYLEGAN_STUDIO_STEPS=100).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytest.importorskip("starlette", reason="the studio extra is not installed (pip install 'opstylegan[studio]')")
pytest.importorskip("uvicorn", reason="the studio extra is not installed (pip install 'opstylegan[studio]')")
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="Playwright is not installed (pip install 'opstylegan[studio-test]')")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium (Debian: apt-get install chromium)")

# Headless on a machine without a network: no sandbox (root in containers), no GPU, and none of Chromium's own
# background traffic (component updates, sync, field trials), which would stall waiting for the network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps", "--mute-audio"]


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory):
    from test_studio import make_studio

    from opstylegan.studio.app import ServerThread

    studio = make_studio(tmp_path_factory.mktemp("cache"), max_steps=100)
    studio.preload()
    with ServerThread(studio) as url:
        yield url
    studio.close()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                   args=CHROMIUM_ARGS, viewport={"width": 1200, "height": 860},
                                                   accept_downloads=True)
        ctx.set_default_timeout(60_000)
        pg = ctx.new_page()
        yield pg
        ctx.close()


def shots_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("OPSTYLEGAN_STUDIO_SCREENSHOTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def slide(page, selector: str, value: str) -> None:
    """Set a range input and fire 'input', as dragging it does."""
    page.eval_on_selector(selector, "(s, v) => { s.value = v; s.dispatchEvent(new Event('input', {bubbles: true})); }",
                          value)


def image_hash(page, selector: str) -> str:
    return page.get_attribute(selector, "data-hash") or ""


def wait_new_image(page, selector: str, old: str) -> str:
    page.wait_for_function("([sel, old]) => (document.querySelector(sel).dataset.hash || '') !== old",
                           arg=[selector, old])  # function forms only: the page's CSP forbids eval
    return image_hash(page, selector)


def test_studio_in_chromium(studio_url, page, tmp_path):
    shots = shots_dir(tmp_path)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    page.goto(studio_url)
    page.wait_for_selector("body[data-ready='1']")
    assert "main: fmnist32-overparam" in page.inner_text("#models")

    # Invert: an example, side by side (baseline w+ | overparam W), a few steps, live view then results.
    page.click("#examples img[data-name='fmnist-test-00000.png']")
    page.wait_for_function("() => !!document.querySelector('#target-img').dataset.hash")
    page.fill("#steps", os.environ.get("OPSTYLEGAN_STUDIO_STEPS", "4"))  # the README's pictures: 100
    page.click("#invert-btn")
    page.wait_for_selector("#run-1 .dl-safetensors", timeout=600_000)
    page.wait_for_function("() => document.querySelector('#job-status').textContent === 'done'")
    for i, caption in enumerate(["baseline · w+", "overparam · W"]):
        assert page.inner_text(f"#run-{i} figcaption") == caption
        assert "LPIPS" in page.inner_text(f"#run-{i} .metrics") and "PSNR" in page.inner_text(f"#run-{i} .metrics")
    with page.expect_download() as dl:
        page.click("#run-1 .dl-safetensors")
    latent = Path(dl.value.path()).read_bytes()
    assert dl.value.suggested_filename.endswith(".safetensors") and b"opstylegan-latent" in latent
    page.screenshot(path=str(shots / "invert.png"), full_page=True)

    # Edit: the inverted W latent; moving a component slider must change the image.
    page.click("nav button[data-tab='edit']")
    page.wait_for_function("() => !!document.querySelector('#edit-img').dataset.hash")
    assert "W (main)" in page.eval_on_selector("#edit-source", "s => s.options[s.selectedIndex].text")
    before = image_hash(page, "#edit-img")
    slide(page, "#pc-0", "4")
    after = wait_new_image(page, "#edit-img", before)
    assert after != before
    slide(page, "#layer-hi", "2")
    wait_new_image(page, "#edit-img", after)
    assert page.inner_text("#layer-label").startswith("style layers 0-2")
    page.screenshot(path=str(shots / "edit.png"), full_page=True)

    # Interpolate: the inverted W latent and a seed of the same model; t moves the frame; strip and GIF.
    page.click("nav button[data-tab='interp']")
    assert "W (main)" in page.eval_on_selector("#interp-a", "s => s.options[s.selectedIndex].text")
    assert page.input_value("#interp-b") == "seed" and page.input_value("#interp-model") == "main"
    page.wait_for_function("() => !!document.querySelector('#strip-img').dataset.hash")
    frame = image_hash(page, "#interp-img")
    slide(page, "#interp-t", "0.1")
    wait_new_image(page, "#interp-img", frame)
    with page.expect_download() as dl:
        page.click("#gif-btn")
    assert Path(dl.value.path()).read_bytes()[:6] == b"GIF89a"
    assert page.is_hidden("#message")
    page.screenshot(path=str(shots / "interpolate.png"), full_page=True)

    # Sample: seeds and truncation.
    page.click("nav button[data-tab='sample']")
    page.wait_for_function("() => !!document.querySelector('#sample-img').dataset.hash")
    grid = image_hash(page, "#sample-img")
    slide(page, "#sample-trunc", "1")
    wait_new_image(page, "#sample-img", grid)
    page.screenshot(path=str(shots / "sample.png"), full_page=True)

    # A corrupt upload: a message in the page, and the studio keeps working.
    page.click("nav button[data-tab='invert']")
    page.set_input_files("#upload", files=[{"name": "broken.png", "mimeType": "image/png",
                                            "buffer": b"\x89PNG\r\n\x1a\n this is not a PNG"}])
    page.wait_for_selector("#message:not([hidden])")
    assert "cannot use broken.png" in page.inner_text("#message")
    page.screenshot(path=str(shots / "bad-upload.png"))
    page.click("#examples img[data-name='fmnist-test-00001.png']")
    page.wait_for_function("() => document.querySelector('#target-name').textContent === 'fmnist-test-00001.png'")
    assert page.is_hidden("#message")

    origin = urlsplit(studio_url).netloc
    foreign = [u for u in requests if urlsplit(u).scheme in ("http", "https") and urlsplit(u).netloc != origin]
    assert not foreign, f"the page contacted other hosts: {foreign}"
    assert not errors, errors
