"""The web service through FastAPI's TestClient: 200 with predict's answer, 413/415/422 with
their reasons, and the server still serving after each; zips guarded; nothing identifying in
answers or logs; uploads deleted after the answer."""

import io
import json
import logging
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _model_folder import make_model_folder
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
    want = {Path(r["path"]).name: r for r in direct.images}
    for row in body["images"]:
        assert row["p_abnormal"] == pytest.approx(want[row["path"]]["p_abnormal"], abs=1e-6)
        assert row["label"] == want[row["path"]]["label"]
        assert row["saliency"].startswith("data:image/png;base64,")
        assert row["preview"].startswith("data:image/png;base64,")
    assert len(body["studies"]) == len(direct.studies)
    assert SECRET_NAME not in res.text and SECRET_ID not in res.text and "Doe" not in res.text


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
