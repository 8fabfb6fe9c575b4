"""Malformed inputs, one table: each is a clear `InputError` or exactly one counted skip.

Never a crash (any other exception fails the test) and never a silently wrong image.
"""

from __future__ import annotations

import re
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import openpyxl
import pydicom
import pytest
from PIL import Image

from lumbarclip.data.imageio import read_image, write_dicom
from lumbarclip.data.manifest import read_manifest
from lumbarclip.data.mendeley import build_mendeley_manifest
from lumbarclip.errors import InputError

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
RANDOM = np.random.default_rng(7).bytes(4096)


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Path], Any]  # returns the skip reasons for skip cases
    error: str = ""  # pattern the InputError message must contain
    skip: str = ""  # pattern the one skip reason must contain


# --- builders -----------------------------------------------------------------------------


def image_bytes(name: str, data: bytes, frame: int | None = None) -> Callable[[Path], Any]:
    def run(tmp: Path) -> Any:
        (tmp / name).write_bytes(data)
        return read_image(tmp / name, frame)

    return run


def image_made(name: str, make: Callable[[Path], None], frame: int | None = None) -> Callable[[Path], Any]:
    def run(tmp: Path) -> Any:
        make(tmp / name)
        return read_image(tmp / name, frame)

    return run


def dicom_edited(edit: Callable[[pydicom.Dataset], None]) -> Callable[[Path], None]:
    """A valid 8x8 MR file, then `edit` applied to its dataset."""

    def make(path: Path) -> None:
        write_dicom(path, np.arange(64, dtype=np.uint16).reshape(8, 8))
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path)

    return make


def png_header(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A PNG whose IHDR claims width x height over a tiny IDAT: no pixel buffer behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def nifti(data: np.ndarray) -> Callable[[Path], None]:
    return lambda path: nib.save(nib.Nifti1Image(data, np.eye(4)), path)


def nifti_header_only(shape: tuple[int, ...]) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        header = nib.Nifti1Header()
        header.set_data_shape(shape)
        header.set_data_dtype(np.uint8)
        with path.open("wb") as fh:
            header.write_to(fh)
            fh.write(b"\0" * 64)

    return make


def float_dicom(values: list[float]) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
        ds.Rows, ds.Columns, ds.BitsAllocated = 1, len(values), 32
        ds.FloatPixelData = np.array(values, np.float32).tobytes()

    return edit


def truncated(source: Path, keep: int) -> bytes:
    data = source.read_bytes()
    return data[: len(data) - keep]


def pil_saved(mode: str, suffix: str = ".png") -> Callable[[Path], None]:
    def make(path: Path) -> None:
        Image.new(mode, (8, 8)).save(path.with_suffix(suffix))

    return make


MANIFEST_HEADER = "image_path,patient_id,split,label,report,sequence,level,findings"
GOOD_ROWS = ("a.png,1,train,1,Bulge at L4-L5.,T2,L4-L5,", "b.png,2,valid,0,Normal.,T1,L3-L4,")


def manifest_text(text: str | bytes) -> Callable[[Path], Any]:
    """A manifest file read as is (for file-level errors)."""

    def run(tmp: Path) -> Any:
        path = tmp / "m.csv"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return read_manifest(path, check_files=False)

    return run


def manifest_row(row: str) -> Callable[[Path], list[str]]:
    """Two good rows and `row` between them; returns the skip reasons (line 3 is `row`)."""

    def run(tmp: Path) -> list[str]:
        for name in ("a.png", "b.png", "c.png"):
            Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp / name)
        (tmp / "m.csv").write_text("\n".join([MANIFEST_HEADER, GOOD_ROWS[0], row, GOOD_ROWS[1]]) + "\n")
        manifest = read_manifest(tmp / "m.csv")
        assert [r.patient_id for r in manifest.records] == ["1", "2"]
        assert all(line == 3 for line, _ in manifest.skipped)
        return [reason for _, reason in manifest.skipped]

    return run


def _pngs(tmp: Path, *pids: str) -> Path:
    images = tmp / "img"
    images.mkdir(exist_ok=True)
    for pid in pids:
        for seq in ("T1", "T2"):
            for disc in (3, 4, 5):
                Image.new("L", (8, 8), 40 * disc).save(images / f"{seq}_{pid}_D{disc}.png")
    return images


def notes_csv(body: bytes, label_column: str | None = "lbp", split_file: bytes | None = None,
              suffix: str = ".csv", extra_png: str = "") -> Callable[[Path], list[str]]:  # fmt: skip
    """Patients 0002 and 0003 have images; the notes are `body`; returns the skip reasons."""

    def run(tmp: Path) -> list[str]:
        images = _pngs(tmp, "0002", "0003")
        if extra_png:
            (images / extra_png).write_bytes(b"")
        notes = tmp / f"notes{suffix}"
        notes.write_bytes(body)
        split = None
        if split_file is not None:
            split = tmp / "split.csv"
            split.write_bytes(split_file)
        report = build_mendeley_manifest(images, notes, tmp / "m.csv", label_column=label_column, split_file=split)
        assert report.manifest.n_patients >= 1
        return list(report.skipped_patients.values()) + report.bad_rows + list(report.ignored_files)

    return run


def notes_xlsx(rows: list[list[Any]]) -> Callable[[Path], list[str]]:
    def run(tmp: Path) -> list[str]:
        book = openpyxl.Workbook()
        for row in rows:
            book.active.append(row)
        book.save(tmp / "notes.xlsx")
        build_mendeley_manifest(_pngs(tmp, "0002"), tmp / "notes.xlsx", tmp / "m.csv", label_column="lbp")
        return []

    return run


GOOD_NOTES = b"patient_id,note,lbp,split\n0002,Bulge at L4/L5.,1,train\n0003,Normal.,0,test\n"


def notes_with(row: str) -> bytes:
    return GOOD_NOTES + row.encode("utf-8") + b"\n"


CASES = [
    # images
    Case("zero-byte .dcm", image_bytes("a.dcm", b""), error="empty file"),
    Case("zero-byte .png", image_bytes("a.png", b""), error="empty file"),
    Case("zero-byte .nii.gz", image_bytes("a.nii.gz", b""), error="empty file"),
    Case("pydicom MR_truncated", image_bytes("t.dcm", (PYDICOM_FILES / "MR_truncated.dcm").read_bytes()), error="pixel data"),
    Case("DICOM cut short", image_bytes("t.dcm", truncated(PYDICOM_FILES / "MR_small.dcm", 3000)), error="pixel data"),
    Case("JPEG-LS DICOM cut short", image_bytes("t.dcm", truncated(PYDICOM_FILES / "MR_small_jpeg_ls_lossless.dcm", 500)),
         error="truncated or not DICOM"),  # fmt: skip
    Case("random bytes named .dcm", image_bytes("r.dcm", RANDOM), error="truncated or not DICOM"),
    Case("random bytes named .ima", image_bytes("r.ima", RANDOM), error="truncated or not DICOM"),
    Case("text named .ima", image_bytes("r.ima", b"patient list\n" * 40), error="truncated or not DICOM"),
    Case("random bytes named .png", image_bytes("r.png", RANDOM), error="cannot read image"),
    Case("random bytes named .nii", image_bytes("r.nii", RANDOM), error="NIfTI"),
    Case("DICOM without pixel data", image_made("a.dcm", dicom_edited(lambda ds: ds.__delattr__("PixelData"))),
         error="without pixel data"),  # fmt: skip
    Case("DICOM header 20000 x 20000", image_made("a.dcm", dicom_edited(lambda ds: setattr(ds, "Rows", 20000) or setattr(ds, "Columns", 20000))),
         error="20000 x 20000 pixels"),  # fmt: skip
    Case("DICOM Rows 0", image_made("a.dcm", dicom_edited(lambda ds: setattr(ds, "Rows", 0))), error="8 x 0 pixels"),
    Case("DICOM NumberOfFrames '1A'", image_bytes("b.dcm", (PYDICOM_FILES / "badVR.dcm").read_bytes()), error="NumberOfFrames"),
    Case("DICOM 1-bit segmentation", image_bytes("s.dcm", (PYDICOM_FILES / "liver_1frame.dcm").read_bytes()), error="1-bit"),
    Case("DICOM float pixels with NaN", image_made("f.dcm", dicom_edited(float_dicom([1.0, np.nan, 3.0]))), error="NaN"),
    Case("DICOM float pixels with inf", image_made("f.dcm", dicom_edited(float_dicom([1.0, np.inf, 3.0]))), error="infinite"),
    Case("DICOM frame out of range", image_made("a.dcm", dicom_edited(lambda ds: None), frame=1), error="frame 1 out of range"),
    Case("PNG header 20000 x 20000", image_bytes("big.png", png_header(20000, 20000)), error="too large|20000"),
    Case("PNG header 9000 x 16", image_bytes("wide.png", png_header(9000, 16)), error="9000 x 16 pixels"),
    Case("PNG truncated IDAT", image_bytes("short.png", png_header(64, 64)), error="cannot read image"),
    Case("PNG 1-bit", image_made("m.png", pil_saved("1")), error="mode '1'"),
    Case("TIFF 32-bit float", image_made("f.tif", pil_saved("F", ".tif")), error="mode 'F'"),
    Case("NIfTI with NaN", image_made("n.nii", nifti(np.full((4, 4, 3), np.nan, np.float32))), error="NaN"),
    Case("NIfTI with inf", image_made("n.nii.gz", nifti(np.full((4, 4, 3), np.inf, np.float32))), error="infinite"),
    Case("NIfTI 4-D series", image_made("n.nii", nifti(np.zeros((4, 4, 3, 2), np.int16))), error="2-D or 3-D"),
    Case("NIfTI complex voxels", image_made("n.nii", nifti(np.zeros((4, 4, 3), np.complex64))), error="not a real number"),
    Case("NIfTI header 20000 x 20000", image_made("h.nii", nifti_header_only((20000, 20000, 1))), error="declares shape"),
    Case("missing image file", lambda tmp: read_image(tmp / "nowhere.png"), error="no such file"),
    Case("folder named like an image", lambda tmp: (tmp / "d.dcm").mkdir() or read_image(tmp / "d.dcm"), error="a folder"),
    # notes, split files, dataset names
    Case("non-UTF-8 notes", notes_csv(notes_with("0004,Compresi\xf3n at L4,1,train").replace(b"\xc3\xb3", b"\xf3")),
         error="not UTF-8"),  # fmt: skip
    Case("empty notes file", notes_csv(b""), error="empty file"),
    Case("notes with a NUL byte", notes_csv(GOOD_NOTES + b"0004,\0,1,train\n"), error="NUL byte"),
    Case("notes with a stray quote", notes_csv(notes_with('0004,"Bulge "at" L4,1,train')), error="line 4: bad CSV"),
    Case("notes as .txt", notes_csv(GOOD_NOTES, suffix=".txt"), error="must be .xlsx or .csv"),
    Case("random bytes named .xlsx", notes_csv(RANDOM, suffix=".xlsx"), error="not a readable .xlsx"),
    Case("xlsx without Patient ID", notes_xlsx([["ID number", "Clinician's Notes"], [2, "Normal."]]), error="no sheet has a 'Patient ID'"),
    Case("xlsx without notes column", notes_xlsx([["Patient ID", "Comment"], [2, "Normal."]]), error="no notes"),
    Case("label column absent", notes_csv(GOOD_NOTES, label_column="grade"), error="no 'grade' label column"),
    Case("empty note", notes_csv(GOOD_NOTES.replace(b"Normal.", b"")), skip="empty note"),
    Case("duplicate IDs, conflicting labels", notes_csv(notes_with("3,More text.,1,test")), skip="conflicting labels"),
    Case("duplicate IDs, conflicting splits", notes_csv(notes_with("0003,More text.,0,train")), skip="conflicting splits"),
    Case("patient ID not a number", notes_csv(notes_with("Jane Doe,Normal.,0,train")), skip="not a number"),
    Case("label neither 0 nor 1", notes_csv(notes_with("0003,,maybe,test")), skip="label must be 0 or 1"),
    Case("split file with a bad split", notes_csv(GOOD_NOTES, split_file=b"patient_id,split\n2,train\n3,holdout\n"),
         skip="split must be"),  # fmt: skip
    Case("PNG name with disc D7", notes_csv(GOOD_NOTES, extra_png="T1_0002_D7.png"), skip="PNG name not like"),
    # manifests
    Case("manifest missing columns", manifest_text("image_path,patient_id,label\na.png,1,1\n"), error="missing column.*split.*report"),
    Case("manifest zero bytes", manifest_text(""), error="empty file"),
    Case("manifest BOM only", manifest_text("\ufeff"), error="empty file"),
    Case("manifest not UTF-8", manifest_text(f"{MANIFEST_HEADER}\na.png,1,train,1,D\xe9g\n".encode("latin-1")), error="not UTF-8"),
    Case("manifest with NUL bytes", manifest_text(f"{MANIFEST_HEADER}\n\0\0\n"), error="line 2: NUL byte"),
    Case("manifest duplicate header", manifest_text("image_path,patient_id,split,label,report,label\n"), error="duplicate column"),
    Case("manifest unterminated quote", manifest_text(f'{MANIFEST_HEADER}\na.png,1,train,1,"Bulge\nb.png,2,valid,0,x,,,\n'),
         error="line 2: bad CSV"),  # fmt: skip
    Case("row with an extra field", manifest_row("c.png,3,train,1,Bulge.,T2,L4-L5,,surplus"), skip="9 fields, the header has 8"),
    Case("row with a missing field", manifest_row("c.png,3,train,1,Bulge."), skip="5 fields, the header has 8"),
    Case("row with a bad label", manifest_row("c.png,3,train,yes,Bulge.,,,"), skip="label must be 0 or 1"),
    Case("row with a bad split", manifest_row("c.png,3,training,1,Bulge.,,,"), skip="split must be one of"),
    Case("row with an empty report", manifest_row("c.png,3,train,1,  ,,,"), skip="empty report"),
    Case("row with a missing image", manifest_row("gone.png,3,train,1,Bulge.,,,"), skip="image not found: gone.png"),
    Case("row with a duplicate image_path", manifest_row("./a.png,3,train,1,Bulge.,,,"), skip="duplicate image_path .first on line 2"),
    Case("row with bad findings JSON", manifest_row('c.png,3,train,1,Bulge.,,,"{not json"'), skip="not valid Findings JSON"),
    Case("row with off-vocabulary findings", manifest_row('c.png,3,train,1,Bulge.,,,"{""other"": [""gout""]}"'),
         skip="not valid Findings JSON"),  # fmt: skip
    Case("row with a bad sequence", manifest_row("c.png,3,train,1,Bulge.,T3,,"), skip="sequence must be one of"),
    Case("row with a bad level", manifest_row("c.png,3,train,1,Bulge.,T1,L4/5,"), skip="level must be one of"),
    Case("row with an empty patient_id", manifest_row("c.png, ,train,1,Bulge.,,,"), skip="empty patient_id"),
]


def test_the_table_is_large_and_unique():
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_malformed_input(case: Case, tmp_path: Path):
    if case.error:
        with pytest.raises(InputError) as info:
            case.run(tmp_path)
        message = str(info.value)
        assert re.search(case.error, message), message
        assert "\n" not in message and len(message) < 400
    else:
        reasons = case.run(tmp_path)
        assert len(reasons) == 1 and re.search(case.skip, reasons[0]), reasons
