"""The page in a real browser: Playwright drives Debian's chromium against a live uvicorn
server, uploads a PNG and a DICOM file, and checks the rendered verdict and overlays."""

import base64
import contextlib
import io
import shutil
import threading
import time

import numpy as np
import pytest
from _model_folder import add_parts, make_model_folder
from _net import free_port
from PIL import Image

from lumbarclip.bundle import ModelFolder
from lumbarclip.data.imageio import write_dicom

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from lumbarclip.inference.predict import Predictor
    from lumbarclip.serve import create_app

    model_dir = make_model_folder(tmp_path_factory.mktemp("model"))
    predictor = Predictor.load(model_dir)
    with serving(create_app(model_dir, predictor=predictor)) as url:
        yield url, predictor


@contextlib.contextmanager
def browser_page(sync_api, url):
    """A headless chromium page opened on `url` and the list its page errors land in."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(url + "/")
            yield page, errors
        finally:
            browser.close()


@contextlib.contextmanager
def serving(app):
    """The app on a free local port in a uvicorn thread, for as long as the block runs."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def scans(folder):
    size = 64
    yy, xx = np.mgrid[:size, :size]
    rng = np.random.default_rng(0)
    pixels = (((yy - 32) ** 2 + (xx - 28) ** 2 < 160) * 30000 + rng.random((size, size)) * 9000).astype(np.uint16)
    png = folder / "axial_t2.png"
    Image.fromarray(pixels).save(png)
    dcm = write_dicom(
        folder / "axial_t1.dcm", pixels[::-1].copy(), PatientName="Doe^Jane", PatientID="PID-SECRET-4711",
        ImageOrientationPatient=[1, 0, 0, 0, 1, 0], SeriesDescription="T1 AX",
    )
    ct = write_dicom(
        folder / "ct.dcm", pixels, Modality="CT", ImageOrientationPatient=[1, 0, 0, 0, 1, 0], ImagePositionPatient=[0, 0, 0]
    )
    return png, dcm, ct


def test_page_uploads_png_and_dicom(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    url, predictor = server
    png, dcm, ct = scans(tmp_path)
    want = predictor.predict([png, dcm, ct])
    with browser_page(sync_api, url) as (page, errors):
        page.wait_for_function("document.getElementById('model-name').textContent.includes('runtime')")
        page.set_input_files("#files", [str(png), str(dcm), str(ct)])
        page.click("#analyse")
        page.wait_for_selector("[data-testid=study-verdict]", timeout=60_000)
        verdicts = page.locator("[data-testid=study-verdict]")
        assert verdicts.count() == len(want.studies)
        # single files are studies of their own, not the evaluated unit: no study verdict, reason shown
        assert all(s.label is None for s in want.studies)
        shown = {verdicts.nth(i).locator(".what").inner_text() for i in range(verdicts.count())}
        assert shown == {"NOT ASSESSED"}
        reasons = [verdicts.nth(i).locator("[data-testid=reason]").inner_text() for i in range(verdicts.count())]
        assert all(r.startswith("no study verdict") for r in reasons)
        from _model_folder import VALIDATED

        note = page.locator("[data-testid=not-validated]")  # once, naming every ungated kind
        assert note.count() == 1 and "not validated for this model" in note.inner_text()
        assert "root compression" in note.inner_text() and "bulge" not in note.inner_text()
        assert {f.finding for r in want.images for f in r.top_findings or []} <= set(VALIDATED)
        cards = page.locator("[data-testid=image-card]")
        assert cards.count() == 3
        names = sorted(cards.nth(i).locator(".name").inner_text() for i in range(3))
        assert names == ["axial_t1.dcm", "axial_t2.png", "ct.dcm"]
        refused = cards.filter(has_text="ct.dcm")
        assert refused.locator(".badge").inner_text() == "NOT ASSESSED"
        assert "not MR" in refused.locator("[data-testid=reason]").inner_text()
        overlays = page.locator("img.overlay")
        assert overlays.count() == 3
        for i in range(3):
            src = overlays.nth(i).get_attribute("src")
            assert src.startswith("data:image/png;base64,")
            Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
            assert overlays.nth(i).evaluate("img => img.complete && img.naturalWidth > 0")
        by_name = {r.path.split("/")[-1]: r for r in want.images}
        for i in range(3):
            card = cards.nth(i)
            row = by_name[card.locator(".name").inner_text()]
            if row.label is not None:
                assert card.locator(".prob span").last.inner_text() == f"{100 * row.p_abnormal:.1f}%"
        assert "Doe" not in page.content() and "PID-SECRET" not in page.content()
        assert errors == []
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        assert (tmp_path / "page.png").stat().st_size > 10_000


def test_page_draws_the_discs_of_a_sagittal_slice(tmp_path):
    """A sagittal model folder with a disc detector: the page names the plane and draws each
    found disc's box with its level over the slice, in the image's own pixel frame."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from dataclasses import replace

    import torch

    from lumbarclip.inference.predict import Predictor
    from lumbarclip.models.detector import DetectorConfig, DiscDetector
    from lumbarclip.serve import create_app

    model_dir = make_model_folder(tmp_path / "model")
    op = ModelFolder.load(model_dir).operating_point
    op.preprocess = replace(op.preprocess, planes=("sagittal",))
    add_parts(model_dir, operating_point=op)
    add_parts(model_dir, card={**ModelFolder.load(model_dir, require=()).card, "input": {"planes": ["sagittal"]}})
    torch.manual_seed(0)
    detector = DiscDetector(DetectorConfig(backbone="test_efficientnet", pretrained="", image_size=96, fpn_channels=32,
                                           head_convs=1, score_thresh=0.0, max_discs=5))  # fmt: skip
    add_parts(model_dir, detector=detector)
    png = tmp_path / "T2_sagittal.png"
    Image.fromarray((np.random.default_rng(0).random((120, 80)) * 255).astype(np.uint8)).save(png)
    predictor = Predictor.load(model_dir)
    (want,) = predictor.predict([png], top_k=0).images
    boxes = [d for d in want.discs if d.box_xyxy]
    assert boxes and want.image_size == [80, 120]
    with serving(create_app(model_dir, predictor=predictor)) as url, browser_page(sync_api, url) as (page, errors):
        page.wait_for_function("document.getElementById('subtitle').textContent.includes('sagittal')")
        page.set_input_files("#files", [str(png)])
        page.click("#analyse")
        page.wait_for_selector("[data-testid=disc-boxes]", timeout=60_000)
        svg = page.locator("[data-testid=disc-boxes]")
        assert svg.get_attribute("viewBox") == "0 0 80 120"
        assert svg.locator("rect").count() == len(boxes)
        assert "L5-S1" in svg.get_attribute("aria-label")
        first = svg.locator("rect").first
        assert float(first.get_attribute("x")) == pytest.approx(boxes[0].box_xyxy[0])
        assert "sagittal" in page.locator("[data-testid=image-card] .tags").inner_text()
        assert errors == []

