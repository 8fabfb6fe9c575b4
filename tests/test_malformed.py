"""Malformed inputs, one table: each is a clear `InputError` or exactly one counted skip.

Never a crash (any other exception fails the test) and never a silently wrong image.
"""

from __future__ import annotations

import re
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


# --- builders: each returns `run(tmp_path)` ---------------------------------------------


def image_file(name: str, data: bytes, frame: int | None = None) -> Callable[[Path], Any]:
    """`data` saved as `name`, then read."""

    def run(tmp: Path) -> Any:
        (tmp / name).write_bytes(data)
        return read_image(tmp / name, frame)

    return run


def image_made(
    name: str, make: Callable[[Path], None], frame: int | None = None
) -> Callable[[Path], Any]:
    """`make(path)` writes the file, then it is read."""

    def run(tmp: Path) -> Any:
        make(tmp / name)
        return read_image(tmp / name, frame)

    return run


def pydicom_file(name: str, cut: int = 0) -> bytes:
    """The bytes of one of pydicom's test files, less its last `cut` bytes."""
    data = (PYDICOM_FILES / name).read_bytes()
    return data[: len(data) - cut]


def dicom_edited(edit: Callable[[pydicom.Dataset], None]) -> Callable[[Path], None]:
    """A valid 8x8 MR file, then `edit` applied to its dataset."""

    def make(path: Path) -> None:
        write_dicom(path, np.arange(64, dtype=np.uint16).reshape(8, 8))
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path)

    return make


def dicom_with(**values: Any) -> Callable[[Path], None]:
    def edit(ds: pydicom.Dataset) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)

    return dicom_edited(edit)


def dicom_without(keyword: str) -> Callable[[Path], None]:
    return dicom_edited(lambda ds: delattr(ds, keyword))


def float_dicom(values: list[float]) -> Callable[[Path], None]:
    def edit(ds: pydicom.Dataset) -> None:
        del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
        ds.Rows, ds.Columns, ds.BitsAllocated = 1, len(values), 32
        ds.FloatPixelData = np.array(values, np.float32).tobytes()

    return dicom_edited(edit)


def png_header(width: int, height: int) -> bytes:
    """An 8-bit gray PNG whose IHDR claims width x height over a tiny IDAT: no pixel buffer."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def folder(path: Path) -> None:
    path.mkdir()


def pil_mode(mode: str) -> Callable[[Path], None]:
    return lambda path: Image.new(mode, (8, 8)).save(path)


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


def _pngs(tmp: Path, *pids: str) -> Path:
    images = tmp / "img"
    images.mkdir(exist_ok=True)
    for pid in pids:
        for seq in ("T1", "T2"):
            for disc in (3, 4, 5):
                Image.new("L", (8, 8), 40 * disc).save(images / f"{seq}_{pid}_D{disc}.png")
    return images


GOOD_NOTES = b"patient_id,note,lbp,split\n0002,Bulge at L4/L5.,1,train\n0003,Normal.,0,test\n"


def notes_with(row: str) -> bytes:
    return GOOD_NOTES + row.encode("utf-8") + b"\n"


def notes(body: bytes, label_column: str = "lbp", split_file: bytes | None = None,
          suffix: str = ".csv", extra_png: str = "") -> Callable[[Path], list[str]]:  # fmt: skip
    """Patients 0002 and 0003 have images, the notes are `body`; returns the skip reasons."""

    def run(tmp: Path) -> list[str]:
        images = _pngs(tmp, "0002", "0003")
        if extra_png:
            (images / extra_png).write_bytes(b"")
        (tmp / f"notes{suffix}").write_bytes(body)
        if split_file is not None:
            (tmp / "split.csv").write_bytes(split_file)
        report = build_mendeley_manifest(
            images, tmp / f"notes{suffix}", tmp / "m.csv", label_column=label_column,
            split_file=tmp / "split.csv" if split_file is not None else None,
        )  # fmt: skip
        assert report.manifest.n_patients >= 1
        return [*report.skipped_patients.values(), *report.bad_rows, *report.ignored_files]

    return run


def notes_xlsx(rows: list[list[Any]]) -> Callable[[Path], Any]:
    def run(tmp: Path) -> Any:
        book = openpyxl.Workbook()
        for row in rows:
            book.active.append(row)
        book.save(tmp / "notes.xlsx")
        images = _pngs(tmp, "0002")
        return build_mendeley_manifest(images, tmp / "notes.xlsx", tmp / "m.csv", label_column="lbp")

    return run


HEADER = "image_path,patient_id,split,label,report,sequence,level,findings"
GOOD_ROWS = ("a.png,1,train,1,Bulge at L4-L5.,T2,L4-L5,", "b.png,2,valid,0,Normal.,T1,L3-L4,")


def manifest_file(text: str | bytes) -> Callable[[Path], Any]:
    """A manifest read as is (file-level errors)."""

    def run(tmp: Path) -> Any:
        (tmp / "m.csv").write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return read_manifest(tmp / "m.csv", check_files=False)

    return run


def manifest_row(row: str) -> Callable[[Path], list[str]]:
    """`row` on line 3 between two good rows; returns the skip reasons."""

    def run(tmp: Path) -> list[str]:
        for name in ("a.png", "b.png", "c.png"):
            Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp / name)
        (tmp / "m.csv").write_text("\n".join([HEADER, GOOD_ROWS[0], row, GOOD_ROWS[1]]) + "\n")
        manifest = read_manifest(tmp / "m.csv")
        assert [r.patient_id for r in manifest.records] == ["1", "2"]
        assert all(line == 3 for line, _ in manifest.skipped)
        return [reason for _, reason in manifest.skipped]

    return run


NAN, INF = np.float32(np.nan), np.float32(np.inf)
# fmt: off
CASES = [
    # images
    Case("zero-byte .dcm", image_file("a.dcm", b""), error="empty file"),
    Case("zero-byte .png", image_file("a.png", b""), error="empty file"),
    Case("zero-byte .nii.gz", image_file("a.nii.gz", b""), error="empty file"),
    Case("pydicom MR_truncated", image_file("t.dcm", pydicom_file("MR_truncated.dcm")), error="pixel data"),
    Case("DICOM cut short", image_file("t.dcm", pydicom_file("MR_small.dcm", cut=3000)), error="pixel data"),
    Case("JPEG-LS DICOM cut short", image_file("t.dcm", pydicom_file("MR_small_jpeg_ls_lossless.dcm", cut=500)),
         error="truncated or not DICOM"),
    Case("random bytes named .dcm", image_file("r.dcm", RANDOM), error="truncated or not DICOM"),
    Case("random bytes named .ima", image_file("r.ima", RANDOM), error="truncated or not DICOM"),
    Case("text named .ima", image_file("r.ima", b"patient list\n" * 40), error="truncated or not DICOM"),
    Case("random bytes named .png", image_file("r.png", RANDOM), error="cannot read image"),
    Case("random bytes named .nii", image_file("r.nii", RANDOM), error="NIfTI"),
    Case("DICOM without pixel data", image_made("a.dcm", dicom_without("PixelData")), error="without pixel data"),
    Case("DICOM header 20000 x 20000", image_made("a.dcm", dicom_with(Rows=20000, Columns=20000)),
         error="20000 x 20000 pixels"),
    Case("DICOM Rows 0", image_made("a.dcm", dicom_with(Rows=0)), error="8 x 0 pixels"),
    Case("DICOM NumberOfFrames '1A'", image_file("b.dcm", pydicom_file("badVR.dcm")), error="NumberOfFrames"),
    Case("DICOM 1-bit segmentation", image_file("s.dcm", pydicom_file("liver_1frame.dcm")), error="1-bit"),
    Case("DICOM float pixels with NaN", image_made("f.dcm", float_dicom([1.0, NAN, 3.0])), error="NaN"),
    Case("DICOM float pixels with inf", image_made("f.dcm", float_dicom([1.0, INF, 3.0])), error="infinite"),
    Case("DICOM frame out of range", image_made("a.dcm", dicom_with(), frame=1), error="frame 1 out of range"),
    Case("PNG header 20000 x 20000", image_file("big.png", png_header(20000, 20000)), error="too large"),
    Case("PNG header 9000 x 16", image_file("wide.png", png_header(9000, 16)), error="9000 x 16 pixels"),
    Case("PNG truncated IDAT", image_file("short.png", png_header(64, 64)), error="cannot read image"),
    Case("PNG 1-bit", image_made("m.png", pil_mode("1")), error="mode '1'"),
    Case("TIFF 32-bit float", image_made("f.tif", pil_mode("F")), error="mode 'F'"),
    Case("NIfTI with NaN", image_made("n.nii", nifti(np.full((4, 4, 3), NAN))), error="NaN"),
    Case("NIfTI with inf", image_made("n.nii.gz", nifti(np.full((4, 4, 3), INF))), error="infinite"),
    Case("NIfTI 4-D series", image_made("n.nii", nifti(np.zeros((4, 4, 3, 2), np.int16))), error="2-D or 3-D"),
    Case("NIfTI complex voxels", image_made("n.nii", nifti(np.zeros((4, 4, 3), np.complex64))),
         error="not a real number"),
    Case("NIfTI header 20000 x 20000", image_made("h.nii", nifti_header_only((20000, 20000, 1))),
         error="declares shape"),
    Case("missing image file", lambda tmp: read_image(tmp / "nowhere.png"), error="no such file"),
    Case("folder named like an image", image_made("d.dcm", folder), error="a folder"),
    # notes, split files, dataset file names
    Case("non-UTF-8 notes", notes(GOOD_NOTES + "0004,Compresión,1,train\n".encode("latin-1")),
         error="not UTF-8"),
    Case("empty notes file", notes(b""), error="empty file"),
    Case("notes with a NUL byte", notes(GOOD_NOTES + b"0004,\0,1,train\n"), error="NUL byte"),
    Case("notes with a stray quote", notes(notes_with('0004,"Bulge "at" L4,1,train')), error="line 4: bad CSV"),
    Case("notes as .txt", notes(GOOD_NOTES, suffix=".txt"), error="must be .xlsx or .csv"),
    Case("random bytes named .xlsx", notes(RANDOM, suffix=".xlsx"), error="not a readable .xlsx"),
    Case("xlsx without Patient ID", notes_xlsx([["ID number", "Clinician's Notes"], [2, "Normal."]]),
         error="no sheet has a 'Patient ID'"),
    Case("xlsx without notes column", notes_xlsx([["Patient ID", "Comment"], [2, "Normal."]]), error="no notes"),
    Case("label column absent", notes(GOOD_NOTES, label_column="grade"), error="no 'grade' label column"),
    Case("empty note", notes(GOOD_NOTES.replace(b"Normal.", b"")), skip="empty note"),
    Case("duplicate IDs, conflicting labels", notes(notes_with("3,More.,1,test")), skip="conflicting labels"),
    Case("duplicate IDs, conflicting splits", notes(notes_with("0003,More.,0,train")), skip="conflicting splits"),
    Case("patient ID not a number", notes(notes_with("Jane Doe,Normal.,0,train")), skip="not a number"),
    Case("label neither 0 nor 1", notes(notes_with("0003,,maybe,test")), skip="label must be 0 or 1"),
    Case("split file with a bad split", notes(GOOD_NOTES, split_file=b"patient_id,split\n2,train\n3,holdout\n"),
         skip="split must be"),
    Case("PNG name with disc D7", notes(GOOD_NOTES, extra_png="T1_0002_D7.png"), skip="PNG name not like"),
    # manifests
    Case("manifest missing columns", manifest_file("image_path,patient_id,label\na.png,1,1\n"),
         error="missing column.*split.*report"),
    Case("manifest zero bytes", manifest_file(""), error="empty file"),
    Case("manifest BOM only", manifest_file("\ufeff"), error="empty file"),
    Case("manifest not UTF-8", manifest_file(f"{HEADER}\na.png,1,train,1,Dég\n".encode("latin-1")),
         error="not UTF-8"),
    Case("manifest with NUL bytes", manifest_file(f"{HEADER}\n\0\0\n"), error="line 2: NUL byte"),
    Case("manifest duplicate header", manifest_file("image_path,patient_id,split,label,report,label\n"),
         error="duplicate column"),
    Case("manifest unterminated quote", manifest_file(f'{HEADER}\na.png,1,train,1,"Bulge\nb.png,2,valid,0,x,,,\n'),
         error="line 2: bad CSV"),
    Case("row with an extra field", manifest_row("c.png,3,train,1,Bulge.,T2,L4-L5,,more"), skip="9 fields, the header"),
    Case("row with a missing field", manifest_row("c.png,3,train,1,Bulge."), skip="5 fields, the header has 8"),
    Case("row with a bad label", manifest_row("c.png,3,train,yes,Bulge.,,,"), skip="label must be 0 or 1"),
    Case("row with a bad split", manifest_row("c.png,3,training,1,Bulge.,,,"), skip="split must be one of"),
    Case("row with an empty report", manifest_row("c.png,3,train,1,  ,,,"), skip="empty report"),
    Case("row with an empty patient_id", manifest_row("c.png, ,train,1,Bulge.,,,"), skip="empty patient_id"),
    Case("row with a missing image", manifest_row("gone.png,3,train,1,Bulge.,,,"), skip="image not found: gone.png"),
    Case("row with a duplicate image_path", manifest_row("./a.png,3,train,1,Bulge.,,,"),
         skip="duplicate image_path .first on line 2"),
    Case("row with bad findings JSON", manifest_row('c.png,3,train,1,Bulge.,,,"{not json"'),
         skip="not valid Findings JSON"),
    Case("row with off-vocabulary findings", manifest_row('c.png,3,train,1,Bulge.,,,"{""other"": [""gout""]}"'),
         skip="not valid Findings JSON"),
    Case("row with a bad sequence", manifest_row("c.png,3,train,1,Bulge.,T3,,"), skip="sequence must be one of"),
    Case("row with a bad level", manifest_row("c.png,3,train,1,Bulge.,T1,L4/5,"), skip="level must be one of"),
]
# fmt: on


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
