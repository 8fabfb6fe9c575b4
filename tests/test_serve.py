"""The web service through FastAPI's TestClient: 200 with predict's answer, 413/415/422 with
their reasons, and the server still serving after each; zips guarded; nothing identifying in
answers or logs; uploads deleted after the answer."""

import io
import json
import logging
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _model_folder import add_parts, make_model_folder
from fastapi.testclient import TestClient
from PIL import Image

from lumbarclip.data.imageio import write_dicom

SECRET_NAME, SECRET_ID = "Doe^Jane", "PID-SECRET-4711"


def phantom(seed: int, size: int = 48) -> np.ndarray:
    """A bright disc on noise, 16-bit (enough structure for the readers' normalisation)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2 - seed) ** 2 < (size / 4) ** 2) * 30000.0
    return (disc + rng.random((size, size)) * 8000).astype(np.uint16)


def png_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(phantom(seed)).save(buf, format="PNG")
    return buf.getvalue()


def dicom_bytes(tmp: Path, seed: int = 1, **attrs) -> bytes:
    path = write_dicom(
        tmp / f"s{seed}.dcm", phantom(seed), PatientName=SECRET_NAME, PatientID=SECRET_ID,
        ImageOrientationPatient=[1, 0, 0, 0, 1, 0], SeriesDescription="T2 AX", **attrs,
    )
    data = path.read_bytes()
    path.unlink()
    return data


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def predictor(model_dir):
    from lumbarclip.inference.predict import Predictor

    return Predictor.load(model_dir)


def client_for(model_dir, predictor, **kw) -> TestClient:
    from lumbarclip.serve import create_app

    return TestClient(create_app(model_dir, predictor=predictor, **kw))


@pytest.fixture(scope="module")
def client(model_dir, predictor):
    return client_for(model_dir, predictor)


def still_serves(client: TestClient) -> None:
    assert client.get("/health").json()["status"] == "ok"
    res = client.post("/predict", files=[("files", ("ok.png", png_bytes(3), "image/png"))])
    assert res.status_code == 200 and len(res.json()["images"]) == 1


def test_health_model_page(client, model_dir):
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/model").json() == json.loads((model_dir / "card.json").read_text())
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="files"' in page.text and client.get("/static/app.js").status_code == 200


def test_predict_png_and_dicom_equals_predictor(client, predictor, tmp_path):
    png, dcm = png_bytes(0), dicom_bytes(tmp_path)
    res = client.post(
        "/predict?saliency=1&previews=1&top_k=2",
        files=[("files", ("scan.png", png, "image/png")), ("files", ("slice.dcm", dcm, "application/dicom"))],
    )
    assert res.status_code == 200, res.text
    body = res.json()
    assert set(body) == {"images", "studies", "skipped"} and body["skipped"] == []
    assert sorted(i["path"] for i in body["images"]) == ["scan.png", "slice.dcm"]
    # the same files given to the library directly give the same numbers
    (tmp_path / "scan.png").write_bytes(png)
    (tmp_path / "slice.dcm").write_bytes(dcm)
    direct = predictor.predict([tmp_path / "scan.png", tmp_path / "slice.dcm"], top_k=2)
    want = {Path(r.path).name: r for r in direct.images}
    for row in body["images"]:
        # predict's line with the client's name, its overlay and preview inline, no report text
        assert list(row) == [k for k in want[row["path"]].dump() if k != "nearest_reports"] + ["saliency", "preview"]
        assert row["p_abnormal"] == pytest.approx(want[row["path"]].p_abnormal, abs=1e-6)
        assert row["label"] == want[row["path"]].label
        assert row["saliency"].startswith("data:image/png;base64,")
        assert row["preview"].startswith("data:image/png;base64,")
    assert len(body["studies"]) == len(direct.studies)
    assert SECRET_NAME not in res.text and SECRET_ID not in res.text and "Doe" not in res.text


def test_openapi_schema_describes_the_prediction(client):
    """/docs shows what /predict answers: the typed result, field by field, and the refusals."""
    spec = client.get("/openapi.json").json()
    answer = spec["paths"]["/predict"]["post"]["responses"]
    assert answer["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ServedResult"}
    assert {"413", "415", "422", "503"} <= set(answer)
    schemas = spec["components"]["schemas"]
    image = schemas["ServedImage"]["properties"]
    assert {"p_abnormal", "label", "in_distribution", "ood_score", "discs", "top_findings", "preview"} <= set(image)
    assert "linear probe" in image["p_abnormal"]["description"]
    assert {"p_abnormal", "p_abnormal_mean_raw", "rule", "not_validated"} <= set(schemas["StudyResult"]["properties"])
    assert {"level", "box_xyxy", "pfirrmann", "validated", "classes"} <= set(schemas["Disc"]["properties"])
    label = schemas["StudyResult"]["properties"]["label"]["anyOf"][0]
    assert label["enum"] == ["normal", "abnormal"]


def test_413_over_the_upload_limit(model_dir, predictor):
    small = client_for(model_dir, predictor, max_upload_mb=0.05)
    res = small.post("/predict", files=[("files", ("big.png", b"\x89PNG" + bytes(80_000), "image/png"))])
    assert res.status_code == 413 and "limit" in res.json()["detail"]
    still_serves(small)


def test_413_when_a_chunked_body_outgrows_the_limit(model_dir, predictor):
    small = client_for(model_dir, predictor, max_upload_mb=0.05)

    def body():  # no Content-Length: the limit is enforced while the body arrives
        yield b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
        for _ in range(20):
            yield bytes(10_000)
        yield b"\r\n--xyz--\r\n"

    res = small.post("/predict", content=body(), headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert "content-length" not in res.request.headers
    assert res.status_code == 413
    still_serves(small)


def test_415_unsupported_type_with_reason(client):
    res = client.post("/predict", files=[("files", ("notes.txt", b"hello", "text/plain"))])
    assert res.status_code == 415
    assert "notes.txt" in res.json()["detail"] and ".txt" in res.json()["detail"]
    still_serves(client)


def test_422_corrupt_files_with_reason(client, tmp_path):
    png = bytearray(png_bytes(0))
    idat = png.index(b"IDAT")
    png[idat + 8] ^= 0xFF  # one byte of image data: only the CRC check catches it
    res = client.post("/predict", files=[("files", ("bad.png", bytes(png), "image/png"))])
    assert res.status_code == 422 and "bad.png" in res.json()["detail"] and "CRC" in res.json()["detail"]
    still_serves(client)
    truncated = dicom_bytes(tmp_path)[:400]
    res = client.post("/predict", files=[("files", ("cut.dcm", truncated, "application/dicom"))])
    assert res.status_code == 422 and "cut.dcm" in res.json()["detail"]
    assert "lumbarclip-upload" not in res.text  # no server path in the reason
    still_serves(client)
    # a good file next to a corrupt one: answered, the bad one listed as skipped
    res = client.post(
        "/predict",
        files=[("files", ("bad.png", bytes(png), "image/png")), ("files", ("ok.png", png_bytes(1), "image/png"))],
    )
    assert res.status_code == 200 and [s["input"] for s in res.json()["skipped"]] == ["bad.png"]


def zip_of(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_of_a_series_and_traversal_names(client, tmp_path):
    from pydicom.uid import generate_uid

    series, study = generate_uid(), generate_uid()
    names = [f"../../series/IM{i}" for i in range(6)] + ["/etc/evil.dcm"]
    entries = {
        name: dicom_bytes(
            tmp_path, seed=i, InstanceNumber=i + 1, SeriesInstanceUID=series, StudyInstanceUID=study,
            ImagePositionPatient=[0.0, 0.0, 4.0 * i],
        )
        for i, name in enumerate(names)
    }
    entries["readme.txt"] = b"not an image"
    res = client.post("/predict", files=[("files", ("study.zip", zip_of(entries), "application/zip"))])
    assert res.status_code == 200, res.text
    body = res.json()
    # one axial T2 series of 7 slices: the three disc-level slices are chosen, one study
    assert len(body["images"]) == 3 and len(body["studies"]) == 1
    assert {i["level"] for i in body["images"]} == {"L3-L4", "L4-L5", "L5-S1"}
    assert all(i["path"].startswith("study.zip:") for i in body["images"])
    assert body["skipped"][0]["input"] == "study.zip:readme.txt"
    assert not (tmp_path.parent / "series").exists() and not Path("/etc/evil.dcm").exists()
    assert "lumbarclip-upload" not in res.text and SECRET_NAME not in res.text


def test_zip_bomb_refused(model_dir, predictor):
    small = client_for(model_dir, predictor, max_upload_mb=0.1)  # unzipped limit 1 MB
    bomb = zip_of({"a.dcm": bytes(20 * 2**20)})
    assert len(bomb) < 0.1 * 2**20
    res = small.post("/predict", files=[("files", ("bomb.zip", bomb, "application/zip"))])
    assert res.status_code == 413 and "bomb.zip" in res.json()["detail"]
    res = small.post("/predict", files=[("files", ("junk.zip", b"PK\x03\x04garbage", "application/zip"))])
    assert res.status_code == 422
    still_serves(small)


def test_no_names_or_header_values_in_logs_and_uploads_deleted(client, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with caplog.at_level(logging.DEBUG):
        res = client.post(
            "/predict?saliency=1",
            files=[("files", ("Jane_Doe_scan.dcm", dicom_bytes(tmp_path), "application/dicom"))],
        )
    assert res.status_code == 200
    assert caplog.records, "the service logs each request"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (SECRET_NAME, SECRET_ID, "Jane_Doe"):
        assert secret not in logged
    assert list((tmp_path / "tmp").iterdir()) == []


def lying_zip(member: str, size: int, declared: int) -> bytes:
    """A zip whose one deflated member of `size` zero bytes claims `declared` bytes in both its
    local header and its central directory entry (CRC left as the true one)."""
    data = bytearray(zip_of({member: bytes(size)}))
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    assert int.from_bytes(data[local + 22 : local + 26], "little") == size  # uncompressed size fields
    assert int.from_bytes(data[central + 24 : central + 28], "little") == size
    data[local + 22 : local + 26] = declared.to_bytes(4, "little")
    data[central + 24 : central + 28] = declared.to_bytes(4, "little")
    return bytes(data)


def test_zip_whose_header_understates_the_size_is_stopped_at_the_budget(model_dir, predictor, tmp_path, monkeypatch):
    from lumbarclip.serve.uploads import UploadError, UploadLimits, save_uploads

    bomb = lying_zip("IM1.dcm", 8 * 2**20, declared=1000)
    # zipfile alone trusts the header: it yields at most the declared bytes, or fails the CRC
    with zipfile.ZipFile(io.BytesIO(bomb)) as zf:
        info = zf.getinfo("IM1.dcm")
        assert info.file_size == 1000 and info.compress_size < 20_000
        try:
            assert len(zf.read("IM1.dcm")) <= 1000
        except zipfile.BadZipFile:
            pass
    # the service inflates the raw stream and counts: refused at the 1 MB budget, nothing kept
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    small = client_for(model_dir, predictor, max_upload_mb=0.1)  # unzipped limit 1 MB
    res = small.post("/predict", files=[("files", ("bomb.zip", bomb, "application/zip"))])
    assert res.status_code == 413, res.text
    detail = res.json()["detail"]
    assert "bomb.zip" in detail and str(int(0.1 * 2**20) * 10) in detail and "\n" not in detail
    assert list((tmp_path / "tmp").iterdir()) == []
    # the same call without the service around it: no half-written file either
    folder = tmp_path / "direct"
    folder.mkdir()
    limits = UploadLimits(max_unzipped_bytes=2**20)
    with pytest.raises(UploadError) as err:
        save_uploads([("ok.png", png_bytes(0)), ("bomb.zip", bomb)], folder, limits)
    assert err.value.status == 413
    assert [p.name for p in folder.rglob("*") if p.is_file()] == ["ok.png"]
    still_serves(small)


def test_zip_header_lies_within_the_budget_and_corrupt_streams_are_422(client, tmp_path):
    dcm = dicom_bytes(tmp_path)
    # a header that claims more than the entry holds, and one that claims less (within budget)
    for declared in (len(dcm) + 10, 4000):
        data = bytearray(zip_of({"IM1.dcm": dcm}))
        for offset in (data.index(b"PK\x03\x04") + 22, data.index(b"PK\x01\x02") + 24):
            data[offset : offset + 4] = declared.to_bytes(4, "little")
        res = client.post("/predict", files=[("files", ("lie.zip", bytes(data), "application/zip"))])
        assert res.status_code == 422 and f"says {declared}" in res.json()["detail"], res.text
    # flipped bytes inside the deflate stream: a zlib error or a CRC mismatch, never a 500
    data = bytearray(zip_of({"IM1.dcm": dcm}))
    start = data.index(b"PK\x03\x04") + 30 + len("IM1.dcm") + 40
    data[start : start + 8] = bytes(b ^ 0x5A for b in data[start : start + 8])
    res = client.post("/predict", files=[("files", ("flip.zip", bytes(data), "application/zip"))])
    assert res.status_code == 422 and "flip.zip" in res.json()["detail"], res.text
    still_serves(client)


def test_stored_zip_entries_are_read(client, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a/scan.png", png_bytes(2))
    res = client.post("/predict", files=[("files", ("stored.zip", buf.getvalue(), "application/zip"))])
    assert res.status_code == 200, res.text
    assert [i["path"] for i in res.json()["images"]] == ["stored.zip:a/scan.png"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_BZIP2) as zf:
        zf.writestr("scan.png", png_bytes(2))
    res = client.post("/predict", files=[("files", ("bz.zip", buf.getvalue(), "application/zip"))])
    assert res.status_code == 422 and "compression method 12" in res.json()["detail"]


@pytest.mark.parametrize("limit", [1, 2])
def test_503_with_retry_after_beyond_max_concurrent(model_dir, predictor, limit, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from lumbarclip.serve import app as serve_app

    entered, release = threading.Semaphore(0), threading.Event()
    real_save = serve_app.save_uploads

    def held_save(*args, **kwargs):  # each upload waits here, inside its slot, until released
        entered.release()
        assert release.wait(30), "the test never released the uploads"
        return real_save(*args, **kwargs)

    monkeypatch.setattr(serve_app, "save_uploads", held_save)
    busy = client_for(model_dir, predictor, max_concurrent=limit)
    assert busy.get("/health").json()["max_concurrent"] == limit

    def send(seed: int):
        return busy.post("/predict", files=[("files", (f"s{seed}.png", png_bytes(seed), "image/png"))])

    with ThreadPoolExecutor(limit) as pool:
        held = [pool.submit(send, seed) for seed in range(limit)]
        for _ in range(limit):  # every slot is taken by an upload in progress
            assert entered.acquire(timeout=30)
        started = time.perf_counter()
        res = send(9)
        assert time.perf_counter() - started < 5  # answered at once, not queued
        assert res.status_code == 503 and int(res.headers["Retry-After"]) > 0
        assert str(limit) in res.json()["detail"]
        assert busy.get("/health").status_code == 200  # only uploads are limited
        release.set()
        assert [f.result(timeout=60).status_code for f in held] == [200] * limit
    assert send(9).status_code == 200  # the slots are free again
    with pytest.raises(ValueError, match="max_concurrent"):
        serve_app.create_app(model_dir, predictor=predictor, max_concurrent=0)


def test_top_k_zero_gives_no_findings_and_no_reports(client):
    res = client.post("/predict?top_k=0", files=[("files", ("ok.png", png_bytes(4), "image/png"))])
    assert res.status_code == 200, res.text
    (row,) = res.json()["images"]
    assert not row.get("top_findings") and not row.get("nearest_reports")
    assert client.post("/predict?top_k=-1", files=[("files", ("ok.png", png_bytes(4), "image/png"))]).status_code == 422


BANK_TEXTS = [f"L{i} disc bulge, patient Smith^{i}" for i in range(4)]


@pytest.fixture(scope="module")
def banked(tmp_path_factory):
    """Two model folders with the same weights and bank texts: one bank written by the synthetic
    writer's path, one from user reports."""
    from lumbarclip.inference.predict import Predictor
    from lumbarclip.bundle.reportbank import SYNTHETIC_REPORTS, USER_REPORTS, ReportBank

    emb = np.random.default_rng(1).normal(size=(len(BANK_TEXTS), 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    out = {}
    for source in (SYNTHETIC_REPORTS, USER_REPORTS):
        folder = make_model_folder(tmp_path_factory.mktemp(source))
        add_parts(folder, bank=ReportBank(emb, BANK_TEXTS, [0, 1, 1, 0], source))
        out[source] = (folder, Predictor.load(folder))
    return out


def nearest_texts(client: TestClient) -> list[str]:
    res = client.post("/predict?top_k=2", files=[("files", ("ok.png", png_bytes(5), "image/png"))])
    assert res.status_code == 200, res.text
    assert res.json()["images"][0]["top_findings"]  # findings stay on either way
    return [r["text"] for row in res.json()["images"] for r in row.get("nearest_reports", [])]


def test_user_reports_shown_only_with_show_reports(banked):
    folder, predictor = banked["user"]
    hidden = client_for(folder, predictor)
    assert hidden.get("/health").json()["nearest_reports"] is False
    res = hidden.post("/predict?top_k=3", files=[("files", ("ok.png", png_bytes(5), "image/png"))])
    assert res.status_code == 200 and "nearest_reports" not in res.json()["images"][0]
    assert "Smith" not in res.text and "disc bulge" not in res.text
    shown = client_for(folder, predictor, show_reports=True)
    assert shown.get("/health").json()["nearest_reports"] is True
    texts = nearest_texts(shown)
    assert len(texts) == 2 and set(texts) <= set(BANK_TEXTS)


def test_synthetic_reports_shown_by_default(banked, tmp_path):
    folder, predictor = banked["synthetic"]
    client = client_for(folder, predictor)
    assert client.get("/health").json()["nearest_reports"] is True
    texts = nearest_texts(client)
    (tmp_path / "ok.png").write_bytes(png_bytes(5))  # the library on the same file agrees
    direct = predictor.predict([tmp_path / "ok.png"], top_k=2, progress=False).images[0].nearest_reports
    assert texts == [r.text for r in direct] and len(texts) == 2


def test_serve_cli_flags(monkeypatch, model_dir):
    import argparse

    import uvicorn

    from lumbarclip.cli import serve as cli_serve

    parser = argparse.ArgumentParser()
    cli_serve.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", str(model_dir)])
    assert args.max_concurrent == 2 and args.show_reports is False
    args = parser.parse_args(["serve", "--model", str(model_dir), "--max-concurrent", "3", "--show-reports"])
    assert args.max_concurrent == 3 and args.show_reports is True
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--model", str(model_dir), "--max-concurrent", "0"])
    seen = {}
    monkeypatch.setattr("lumbarclip.serve.create_app", lambda model, **kw: seen.update(kw) or "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    assert args.func(args) == 0
    assert seen["max_concurrent"] == 3 and seen["show_reports"] is True
