"""`ditkit demo` for real: the command serves a tiny checkpoint on a free localhost port; gradio_client drives
the API and Debian's Chromium (Playwright for Python, no downloaded browser) drives the page.

The browser tests skip when /usr/bin/chromium or playwright is missing (.ci/run installs chromium).
Set DITKIT_DEMO_SCREENSHOT=docs/demo.png to also write the README's screenshot there.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("offline_gradio_env")  # conftest.py


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_model(path: Path) -> Path:
    import torch

    import ditkit
    from ditkit.pipeline import DiTPipeline

    torch.manual_seed(0)
    model = ditkit.create_model(
        "DiT-S/8", input_size=8, in_channels=1, num_classes=10, depth=1, hidden_size=32, num_heads=2
    )
    DiTPipeline(model, id2label={i: str(i) for i in range(10)}).save_pretrained(path)
    return path


def _start(args: list[str], root: Path, ready: str):
    """Start `ditkit demo ARGS` in root; returns (process, log file) once `ready` is in its output."""
    log = open(root / "server.log", "w+")  # noqa: SIM115 (closed by _stop)
    env = {**os.environ, **OFFLINE}
    cmd = [sys.executable, "-m", "ditkit.cli.main", "demo", *args]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while True:
        log.seek(0)
        text = log.read()
        if ready in text:
            return proc, log
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"ditkit demo did not start (exit {proc.poll()}):\n{text[-3000:]}")
        time.sleep(0.2)


def _stop(proc, log) -> None:
    proc.send_signal(signal.SIGTERM)  # stops it as Ctrl-C does: the server closes, temporary files go
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, model path): `ditkit demo --ckpt tiny --port P` running for this module's tests."""
    root = tmp_path_factory.mktemp("demo")
    model = _tiny_model(root / "tiny")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    proc, log = _start(["--ckpt", str(model), "--port", str(port)], root, f"serving tiny at {url}")
    yield url, model
    _stop(proc, log)


def _reference(model: Path, class_id: int, seed: int, n: int, steps: int) -> np.ndarray:
    """What the page must show: the demo's generation function on the same checkpoint, in this process."""
    from ditkit.demo import GenerateRequest, build_spec, generate
    from ditkit.pipeline import DiTPipeline

    pipe = DiTPipeline.from_pretrained(model)
    req = GenerateRequest(class_id=class_id, steps=steps, num_images=n, seed=seed)
    return generate(pipe, build_spec(pipe, "tiny"), req).uint8


# -- the API through gradio_client ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server[0], verbose=False, download_files=True)


def _api_images(result) -> list[np.ndarray]:
    from PIL import Image

    gallery, files, info = result
    return [np.asarray(Image.open(item["image"]).convert("RGB")) for item in gallery]


def test_api_generate_and_downloads(server, client):
    result = client.predict(class_id=7, steps=2, seed="11", num_images=2, api_name="/generate")
    images = _api_images(result)
    assert [im.shape for im in images] == [(8, 8, 3)] * 2  # the checkpoint's resolution
    np.testing.assert_array_equal(np.stack(images), _reference(server[1], 7, 11, 2, 2))
    zip_path, npz_path = (Path(p) for p in result[1])
    assert zip_path.name == "images.zip" and npz_path.name == "samples.npz"
    with np.load(npz_path) as npz:
        np.testing.assert_array_equal(npz["arr_0"], np.stack(images))
        assert npz["arr_1"].tolist() == [7, 7]
    assert "seed: 11" in result[2]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"steps": 200}, "maximum value 100"),
        ({"guidance_scale": 11}, "maximum value 10"),
        ({"num_images": 11}, "maximum value 10"),
        ({"num_images": 0}, "minimum value 1"),
        ({"seed": "abc"}, "seed must be an integer or 'random'"),
        ({"class_id": 10}, "not in the list of choices"),
        ({"interval_start": 0.8, "interval_end": 0.2}, "must not exceed its end"),
    ],
)
def test_api_refuses_out_of_range_then_still_works(server, client, change, message):
    args = {"class_id": 1, "steps": 2, "seed": "3", "num_images": 1, **change}
    with pytest.raises(gradio_client.exceptions.AppError, match=message):
        client.predict(**args, api_name="/generate")
    ok = client.predict(class_id=1, steps=2, seed="3", num_images=1, api_name="/generate")
    assert _api_images(ok)[0].shape == (8, 8, 3)


@pytest.fixture
def in_process(tmp_path, monkeypatch):
    """Launch the demo app for a pipeline in this process (faster than a second command); closes it after."""
    from ditkit.demo import Bounds, build_spec
    from ditkit.demo.app import build_app
    from ditkit.demo.serve import launch, offline_env

    offline_env()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    apps = []

    def start(pipe, name):
        demo = build_app(pipe, build_spec(pipe, name), tmp_path / name)
        port = _free_port()
        launch(demo, "127.0.0.1", port, Bounds())
        apps.append(demo)
        return gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)

    yield start
    for demo in apps:
        demo.close()


def test_api_attributes_any_and_embedding_uploads(in_process, tmp_path):
    import torch
    from PIL import Image

    import ditkit
    from ditkit.encoders import ToyEncoder
    from ditkit.pipeline import DiTPipeline

    def tiny(**kw):
        torch.manual_seed(0)
        return ditkit.create_model(
            "DiT-S/8", input_size=8, in_channels=1, depth=1, hidden_size=32, num_heads=2, **kw
        )

    attrs = {"genre": ["landscape", "portrait", "still_life"], "style": ["Impressionism", "Cubism"]}
    multi = in_process(DiTPipeline(tiny(num_classes=(3, 2)), attributes=attrs), "wikiart")
    out = multi.predict(genre=2, style=-1, steps=2, seed="0", num_images=2, api_name="/generate")
    with np.load(out[1][1]) as npz:
        assert npz["arr_1"].tolist() == [[2, -1], [2, -1]]  # style left free ("any")
    with pytest.raises(gradio_client.exceptions.AppError, match="not in the list of choices"):
        multi.predict(genre=3, style=-1, steps=2, api_name="/generate")

    emb = in_process(DiTPipeline(tiny(num_classes=0, cond_dim=16), encoder=ToyEncoder(16)), "emb")
    good, text, fake = tmp_path / "c.png", tmp_path / "notes.txt", tmp_path / "fake.png"
    Image.new("RGB", (20, 20), (9, 200, 9)).save(good)
    text.write_text("hello")
    fake.write_bytes(b"not an image")
    for bad in (text, fake):
        with pytest.raises(gradio_client.exceptions.AppError, match=f"{bad.name}: not a readable image"):
            emb.predict(prompt="", image=gradio_client.handle_file(str(bad)), steps=2, api_name="/generate")
    with pytest.raises(gradio_client.exceptions.AppError, match="at most 300"):
        emb.predict(prompt="x" * 400, image=None, steps=2, api_name="/generate")
    by_image = emb.predict(
        prompt="",
        image=gradio_client.handle_file(str(good)),
        steps=2,
        seed="1",
        num_images=1,
        api_name="/generate",
    )
    by_text = emb.predict(
        prompt="a green square", image=None, steps=2, seed="1", num_images=1, api_name="/generate"
    )
    assert _api_images(by_image)[0].shape == _api_images(by_text)[0].shape == (8, 8, 3)


# -- the page in Chromium ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 960})
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_selector("#generate")
    return page


def _set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _fill_and_generate(page, class_name: str, seed: str, steps: int, n: int) -> None:
    picker = page.locator("#class input")
    picker.click()
    picker.fill(class_name)
    page.locator("ul[role=listbox] li", has_text=class_name).first.click()
    _set_number(page, "steps", steps)
    _set_number(page, "num-images", n)
    page.locator("#seed textarea, #seed input").first.fill(seed)
    page.locator("#generate").click()


def _gallery(page, n: int) -> list[np.ndarray]:
    from PIL import Image

    images = page.locator("#gallery img")
    page.wait_for_function(
        f"document.querySelectorAll('#gallery img').length === {n} && "
        "[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    out = []
    for k in range(n):
        img = images.nth(k)
        size = img.evaluate("i => [i.naturalWidth, i.naturalHeight]")
        assert size == [8, 8], f"gallery image {k} is {size}, the checkpoint makes 8x8"
        body = page.request.get(img.get_attribute("src")).body()
        out.append(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")))
    return out


def test_browser_pick_label_generate_and_screenshot(server, browser, tmp_path):
    url, model = server
    page = _open(browser, url)
    assert "8x8 px" in page.locator("#card").inner_text()  # the model card
    _fill_and_generate(page, "7", "11", steps=2, n=3)
    shown = _gallery(page, 3)
    np.testing.assert_array_equal(np.stack(shown), _reference(model, 7, 11, 3, 2))
    page.locator("#downloads").get_by_text("samples.npz").wait_for()
    page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    if os.environ.get("DITKIT_DEMO_SCREENSHOT"):
        page.screenshot(path=os.environ["DITKIT_DEMO_SCREENSHOT"], full_page=True)
    page.close()


def test_browser_bad_value_shows_one_line_then_generates(server, browser):
    url, model = server
    page = _open(browser, url)
    _fill_and_generate(page, "2", "not-a-seed", steps=2, n=1)
    error = page.get_by_text("seed must be an integer or 'random', got 'not-a-seed'")
    error.first.wait_for()
    # the server keeps running: the next generation works
    page.locator("#seed textarea, #seed input").first.fill("5")
    page.locator("#generate").click()
    np.testing.assert_array_equal(np.stack(_gallery(page, 1)), _reference(model, 2, 5, 1, 2))
    page.close()


# Training flags for a run of a few seconds (the embedded default takes minutes).
TINY_TRAIN = [
    "model.depth=1",
    "model.hidden_size=32",
    "model.num_heads=2",
    "model.patch_size=4",
    "train.threads=1",
    "train.max_steps=3",
    "train.ckpt_every=1000",
    "train.sample_every=0",
    "sample.steps=2",
    "sample.num_per_label=1",
]


@pytest.mark.slow
def test_browser_no_run_trains_the_default_then_serves_it(browser, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    args = ["--runs", str(tmp_path / "runs"), "--port", str(port), "--train-set", *TINY_TRAIN]
    proc, log = _start(args, tmp_path, "to train the embedded default")
    try:
        page = browser.new_page()
        page.set_default_timeout(120_000)
        page.goto(url)
        page.locator("#train").click()
        page.wait_for_selector("#generate")  # the page reloaded itself into the generation page
        assert "001-DiT-Digits (step 3)" in page.locator("#card").inner_text()
        _fill_and_generate(page, "4", "1", steps=2, n=1)
        _gallery(page, 1)  # the digits default makes 8x8 images, as the tiny model does
        page.close()
    finally:
        _stop(proc, log)
