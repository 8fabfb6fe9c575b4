"""report.html from small synthetic inputs: self-contained, integrity first, every figure a
decodable inline PNG, and it loads in headless Chromium without console errors."""

import base64
import collections
import dataclasses
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lumbarclip.data.manifest import ImageRecord, Manifest
from lumbarclip.evaluation.integrity import integrity_checks
from lumbarclip.evaluation.predictions import Predictions
from lumbarclip.evaluation.report import ReportInputs, SaliencyGallery, render_report, write_html_report
from lumbarclip.evaluation.retrieval import retrieval_metrics

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DATA_IMG = re.compile(r"<img[^>]*src=['\"]data:image/png;base64,([A-Za-z0-9+/=]+)['\"]")


#: Patient ids that look like hospital record numbers; none may reach the page.
RAW_IDS = [f"MRN-{4711 + 37 * i}" for i in range(8)]


@pytest.fixture(scope="module")
def report_inputs(tmp_path_factory) -> ReportInputs:
    tmp = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    n_patients, per = 8, 3
    labels = np.repeat((np.arange(n_patients) % 4 != 0).astype(int), per)
    pids = np.repeat(RAW_IDS[::-1], per)  # not in sorted order: the numbering must sort them
    records = []
    for i, (pid, label) in enumerate(zip(pids, labels, strict=True)):
        path = tmp / f"img{i}.png"
        Image.fromarray((rng.random((24, 24)) * 65535).astype(np.uint16)).save(path)
        records.append(ImageRecord(path, pid, "test", int(label), f"note {pid}", "T2", "L4-L5"))
    train = [ImageRecord(tmp / "x.png", f"T{i}", "train", i % 2, "n") for i in range(4)]
    probe = Predictions(labels, np.clip(0.5 * labels + 0.5 * rng.random(len(labels)), 0, 1), pids)
    zero = Predictions(labels, rng.random(len(labels)), pids)
    image_emb = rng.normal(size=(len(labels), 6))
    image_emb /= np.linalg.norm(image_emb, axis=1, keepdims=True)
    text_emb = image_emb[::per] + 0.1
    text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
    metrics = {
        **probe.metrics(),
        "classifier": "linear_probe",
        "zero_shot": zero.metrics(),
        "retrieval": retrieval_metrics(image_emb, pids, text_emb, pids[::per]),
        "ci95": probe.bootstrap(n_resamples=30),
        "baselines": {"majority": Predictions(labels, np.full(len(labels), 0.75), pids).metrics()},
        "label_efficiency": {
            "linear_probe": {f: {"patients": k, **probe.metrics()} for f, k in (("0.1", 2), ("1.0", 8))}
        },
        "integrity": integrity_checks(
            Manifest(tmp / "m.csv", records + train),
            "test",
            {"linear_probe": ["image"], "fusion": ["report"]},
        ),
    }
    return ReportInputs(
        metrics=metrics,
        predictions={"linear_probe": probe, "zero_shot": zero},
        records=records,
        image_emb=image_emb,
        text_emb=text_emb,
        text_labels=labels[::per],
        class_emb=text_emb[:2],
        meta={"split": "test"},
    )


@pytest.fixture(scope="module")
def report_path(report_inputs, tmp_path_factory) -> Path:
    return write_html_report(report_inputs, tmp_path_factory.mktemp("page") / "report.html")


def test_report_is_self_contained_with_decodable_figures(report_path):
    page = report_path.read_text(encoding="utf-8")
    pngs = DATA_IMG.findall(page)
    # curves, confusion, reliability, embedding map, label efficiency + 24 gallery thumbnails
    assert len(pngs) == 5 + 24
    for data in pngs:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            assert im.format == "PNG" and min(im.size) > 10
    assert not re.search(r"(src|href)=['\"](?!data:)", page)  # nothing fetched from outside
    assert "<script" not in page


def test_integrity_comes_first_and_warns(report_path):
    page = report_path.read_text(encoding="utf-8")
    headings = re.findall(r"<h2>([^<]+)</h2>", page)
    assert headings[0] == "Integrity checks"
    assert {"Headline", "Baselines", "Label efficiency", "Retrieval"} <= set(headings)
    assert "fusion reads report" in page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(report_path, tmp_path):
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        report_path.as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert "<h2>Integrity checks</h2>" in dom
    assert len(DATA_IMG.findall(dom)) == 5 + 24
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console


def test_patients_named_by_pseudonym_never_by_id(report_inputs, report_path):
    page = report_path.read_text(encoding="utf-8")
    for raw in RAW_IDS:
        assert raw not in page
    assert not re.search(r"MRN-\d", page)
    # all 24 images are in the gallery: each of the 8 patients' 3 images under one pseudonym,
    # numbered in the sorted order of the ids (worked out here, not by the report code)
    alts = re.findall(r"<figure><img alt='([^']*)' src='data:", page)
    assert collections.Counter(alts) == {f"patient {k}": 3 for k in range(1, 9)}
    number = {pid: k for k, pid in enumerate(sorted(RAW_IDS), start=1)}
    captions = re.findall(r"<figcaption>(patient \d+) (L4-L5 T2)<br>true (\w+),", page)
    label_of = {number[r.patient_id]: ("abnormal" if r.label else "normal") for r in report_inputs.records}
    assert len(captions) == 24
    assert all(label_of[int(who.split()[1])] == truth for who, _, truth in captions)


def test_saliency_captions_pseudonymised(report_inputs):
    png = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(png, format="PNG")
    first, last = sorted(RAW_IDS)[0], sorted(RAW_IDS)[-1]
    gallery = SaliencyGallery([(png.getvalue(), f"{first} L4-L5 T2: hit"), (png.getvalue(), f"{last} ")])
    page = render_report(dataclasses.replace(report_inputs, saliency=gallery))
    assert not any(raw in page for raw in RAW_IDS)
    assert "<figcaption>patient 1 L4-L5 T2: hit</figcaption>" in page
    assert "<figcaption>patient 8 </figcaption>" in page
