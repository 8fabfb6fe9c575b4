"""Image I/O: every format, pydicom's own MR test files, orientation, privacy, `data inspect`."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.orientations import axcodes2ornt, ornt_transform
from PIL import Image

from lumbarclip import cli
from lumbarclip.data.imageio import load_image, normalise, read_image, write_dicom
from lumbarclip.errors import InputError

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _modality(path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).get("Modality", ""))
        except Exception:
            return ""


#: Every MR file pydicom ships (listed, never fetched: get_testdata_files goes online).
MR_FILES = [p for p in sorted(PYDICOM_FILES.glob("*.dcm")) if _modality(p) == "MR"]
MR_READABLE = [p for p in MR_FILES if p.name != "MR_truncated.dcm"]


def run_cli(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    """`lumbarclip ARGV` in-process, with only the `data` command registered."""
    monkeypatch.setattr(cli, "COMMANDS", ("data",))
    return cli.main(list(argv))


def gradient(rows: int = 32, cols: int = 32, scale: int = 1) -> np.ndarray:
    return (np.add.outer(np.arange(rows), 2 * np.arange(cols)) * scale).astype(np.uint16)


def test_pydicom_mr_files_cover_the_transfer_syntaxes():
    names = {p.name for p in MR_FILES}
    assert {
        "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
        "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_truncated.dcm",
    } <= names  # fmt: skip


@pytest.mark.parametrize("path", MR_READABLE, ids=lambda p: p.name)
def test_every_pydicom_mr_file_loads(path):
    image = read_image(path)
    assert image.pixels.dtype == np.float32 and image.pixels.ndim == 2
    assert image.pixels.min() == 0.0 and image.pixels.max() == 1.0
    assert image.format == "dicom" and image.bit_depth in (12, 16)
    assert image.raw_range[0] < image.raw_range[1]
    if path.name.startswith("MR_small"):  # lossless encodings of one image decode identically
        np.testing.assert_array_equal(image.pixels, load_image(PYDICOM_FILES / "MR_small.dcm"))
        assert image.spacing_mm == pytest.approx((0.3125, 0.3125))


def test_truncated_mr_file_is_refused():
    with pytest.raises(InputError, match="MR_truncated.dcm: .*pixel data"):
        read_image(PYDICOM_FILES / "MR_truncated.dcm")


def test_every_pydicom_test_file_loads_or_is_refused_cleanly():
    loaded = 0
    for path in sorted(p for p in PYDICOM_FILES.iterdir() if p.is_file()):
        try:
            image = read_image(path)
        except InputError as err:
            assert str(path) in str(err) and "\n" not in str(err)
            continue
        loaded += 1
        assert image.pixels.ndim == 2 and np.isfinite(image.pixels).all()
        assert 0.0 <= image.pixels.min() <= image.pixels.max() <= 1.0
    assert loaded >= 40


def test_rescale_slope_intercept_gives_modality_units(tmp_path):
    pixels = gradient()
    path = write_dicom(tmp_path / "ct.dcm", pixels, RescaleSlope="2", RescaleIntercept="-100")
    image = read_image(path)
    assert image.raw_range == (-100.0, 2.0 * pixels.max() - 100.0)


def test_monochrome1_is_inverted(tmp_path):
    pixels = gradient()
    mono2 = read_image(write_dicom(tmp_path / "m2.dcm", pixels)).pixels
    inverted = write_dicom(tmp_path / "m1.dcm", pixels, PhotometricInterpretation="MONOCHROME1")
    mono1 = read_image(inverted).pixels
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_multiframe_takes_the_middle_frame_or_the_one_asked(tmp_path):
    frames = np.zeros((5, 16, 16), np.uint16)
    for k in range(5):
        frames[k, k, 0] = 1000  # a bright pixel whose row names the frame
    path = write_dicom(tmp_path / "multi.dcm", frames)
    middle = read_image(path)
    assert (middle.frame, middle.n_frames) == (2, 5)
    assert np.unravel_index(middle.pixels.argmax(), middle.shape) == (2, 0)
    assert np.unravel_index(read_image(path, frame=4).pixels.argmax(), (16, 16)) == (4, 0)
    with pytest.raises(InputError, match="frame 5 out of range"):
        read_image(path, frame=5)


def test_12_bit_dicom_and_pixel_spacing(tmp_path):
    path = write_dicom(tmp_path / "12.dcm", gradient(scale=40), spacing_mm=(0.7, 0.6))
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = 12, 11
    ds.save_as(path)
    image = read_image(path)
    assert image.bit_depth == 12 and image.spacing_mm == (0.7, 0.6)
    assert image.raw_range == (0.0, float(gradient(scale=40).max()))


def test_dicom_content_is_recognised_whatever_the_name(tmp_path):
    path = write_dicom(tmp_path / "scan.dcm", gradient())
    renamed = path.rename(tmp_path / "scan.png")
    assert read_image(renamed).format == "dicom"


def test_png_8_bit(tmp_path):
    Image.fromarray(gradient().astype(np.uint8)).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert (image.format, image.bit_depth, image.shape) == ("png", 8, (32, 32))
    assert np.all(np.diff(image.pixels[0]) >= 0) and image.pixels[0, 0] == 0.0


def test_png_16_bit_keeps_more_than_256_levels(tmp_path):
    pixels = (1000 + np.arange(64 * 64)).reshape(64, 64).astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "a16.png")
    image = read_image(tmp_path / "a16.png")
    assert image.bit_depth == 16 and image.raw_range == (1000.0, 1000.0 + 64 * 64 - 1)
    assert len(np.unique(image.pixels)) > 3000


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_and_palette_png_become_gray(tmp_path, mode):
    gray = Image.fromarray((gradient() * 3).astype(np.uint8))
    gray.save(tmp_path / "gray.png")
    gray.convert(mode).save(tmp_path / "c.png")
    expected = read_image(tmp_path / "gray.png").pixels
    np.testing.assert_allclose(read_image(tmp_path / "c.png").pixels, expected, atol=1e-5)


def test_jpeg_and_multipage_tiff(tmp_path):
    Image.fromarray(gradient().astype(np.uint8)).save(tmp_path / "a.jpg", quality=95)
    assert read_image(tmp_path / "a.jpg").format == "jpeg"
    pages = [Image.fromarray(np.full((8, 8), 10 * k, np.uint8)) for k in range(3)]
    pages[0].save(tmp_path / "s.tif", save_all=True, append_images=pages[1:])
    image = read_image(tmp_path / "s.tif")
    assert (image.format, image.frame, image.n_frames, image.raw_range) == ("tiff", 1, 3, (10.0, 10.0))
    assert image.constant and not image.pixels.any()


def _ras_volume() -> np.ndarray:
    """X=6 (left->right), Y=5 (posterior->anterior), Z=7 (inferior->superior)."""
    vol = np.ones((6, 5, 7), np.float32) * (np.arange(7) + 1)  # each axial slice z holds z+1
    vol[5, 4, :] = 100.0  # patient right, anterior
    return vol


def test_nifti_takes_an_axial_slice_in_the_dicom_view(tmp_path):
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(_ras_volume(), np.diag([0.5, 0.7, 4.0, 1.0])), path)
    image = read_image(path)
    assert (image.format, image.frame, image.n_frames, image.shape) == ("nifti", 3, 7, (5, 6))
    assert image.raw_range == (4.0, 100.0) and image.spacing_mm == (0.7, 0.5)
    assert image.pixels[0, 0] == 1.0  # anterior at the top, the patient's right on the left
    assert read_image(path, frame=6).raw_range == (7.0, 100.0)


def test_nifti_orientation_is_undone_before_slicing(tmp_path):
    img = nib.Nifti1Image(_ras_volume(), np.diag([0.5, 0.7, 4.0, 1.0]))
    nib.save(img, tmp_path / "ras.nii")
    other = img.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt("SPL")))
    assert other.shape == (7, 5, 6)
    nib.save(other, tmp_path / "spl.nii")
    for frame in (0, 3, 6):
        a, b = read_image(tmp_path / "ras.nii", frame), read_image(tmp_path / "spl.nii", frame)
        np.testing.assert_array_equal(a.pixels, b.pixels)
        assert a.raw_range == b.raw_range and a.spacing_mm == pytest.approx(b.spacing_mm)


def test_normalise_is_robust_and_keeps_sparse_detail():
    ramp = normalise(np.arange(1000.0))
    assert ramp[0] == 0.0 and ramp[-1] == 1.0 and abs(ramp[500] - 0.5) < 0.01
    assert normalise(np.r_[np.zeros(999), 50.0]).max() == 1.0  # percentiles coincide
    assert not normalise(np.full((4, 4), 7.0)).any()


def test_constant_image_is_flagged(tmp_path):
    image = read_image(write_dicom(tmp_path / "c.dcm", np.full((8, 8), 300, np.uint16)))
    assert image.constant and image.raw_range == (300.0, 300.0) and not image.pixels.any()


PHI = {
    "PatientName": "Doe^Jane",
    "PatientID": "SECRET4711",
    "PatientBirthDate": "19700101",
    "StudyDate": "2024XX02",  # invalid on purpose: pydicom warnings quote such values
    "InstitutionName": "Example General Hospital",
    "ReferringPhysicianName": "Who^Doctor",
    "AccessionNumber": "ACC998877",
}


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA:UserWarning")  # the test sends it on purpose
def test_no_header_identity_reaches_any_output(tmp_path, monkeypatch, capsys, caplog):
    good = write_dicom(tmp_path / "good.dcm", gradient(), **PHI)
    bad = write_dicom(tmp_path / "bad.dcm", gradient(), **PHI)
    ds = pydicom.dcmread(bad)
    del ds.Rows
    ds.save_as(bad)
    caplog.clear()  # writing the invalid date above is logged; reading must not be
    capsys.readouterr()  # likewise any warning printed while writing
    assert json.dumps(read_image(good).metadata())
    assert run_cli(monkeypatch, "data", "inspect", str(good), str(bad)) == 2
    captured = capsys.readouterr()
    output = captured.out + captured.err + caplog.text
    assert '"format": "dicom"' in output and "bad.dcm" in output
    for value in PHI.values():
        assert value not in output and value.split("^")[0] not in output


def test_inspect_prints_json_lines_and_reasons(tmp_path, monkeypatch, capsys):
    Image.fromarray(gradient().astype(np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "empty.dcm").write_bytes(b"")
    good = [str(PYDICOM_FILES / "MR_small_RLE.dcm"), str(tmp_path / "a.png")]
    assert run_cli(monkeypatch, "data", "inspect", *good) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["path"] for d in lines] == good
    assert lines[0]["bit_depth"] == 16 and lines[0]["spacing_mm"] == [0.3125, 0.3125]
    assert lines[1]["shape"] == [32, 32] and (lines[1]["min"], lines[1]["max"]) == (0.0, 1.0)
    assert run_cli(monkeypatch, "data", "inspect", good[1], str(tmp_path / "empty.dcm")) == 2
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1
    reason = f"lumbarclip data inspect: {tmp_path / 'empty.dcm'}: empty file (0 bytes)"
    assert captured.err.splitlines() == [reason]
