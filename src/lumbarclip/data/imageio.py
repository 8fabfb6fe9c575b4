"""Image I/O: every format becomes a float32 2-D array in [0, 1] by the same normalisation.

Formats: DICOM (`.dcm`, Siemens `.ima`, or any file with the `DICM` marker; every transfer
syntax pydicom and the installed pylibjpeg plugins decode), PNG 8/16-bit, JPEG, TIFF and
other 8/16-bit images PIL reads, and NIfTI (`.nii`, `.nii.gz`).

Stacks: a multi-frame DICOM, a multi-page image or a NIfTI volume gives one 2-D slice, the
middle one (index n // 2) unless `frame` names another. NIfTI volumes are first turned to
RAS+ (`nibabel.as_closest_canonical`) so `frame` counts axial slices from inferior to
superior, and the slice is returned as DICOM axial images are shown: anterior at the top,
the patient's right on the image's left.

Refused with `InputError` before any pixel is decoded: empty or missing files, headers that
declare more than `MAX_SIDE` pixels a side (or a NIfTI volume over `MAX_VOXELS`), PNGs whose
chunk CRCs do not match (Pillow checks only the header chunks', not the image data's), DICOM
files without pixel data, 1-bit images (masks, not scans), float or unknown PIL modes;
after decoding: truncated pixel data and NaN or infinite pixels. A constant image is
allowed: its pixels are all zero and `LoadedImage.constant` says so.

Privacy: only technical DICOM attributes are read (geometry, bit depth, rescale, spacing);
pydicom warnings, which can quote header values, are silenced, and nothing from the header
that names a person, a date or an institution reaches `LoadedImage` or an error message.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.datadict import dictionary_has_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from lumbarclip.errors import InputError

#: Largest side, in pixels, a header may declare; checked before decoding.
MAX_SIDE = 8192
#: Largest NIfTI volume, in voxels (a 512 x 512 x 512 volume is 2**27).
MAX_VOXELS = 2**28
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".ima", ".dicom")
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
#: PIL modes accepted, with the bit depth they stand for. "1" (masks) and "F" (floats of
#: unknown scale) are refused; palette and colour images become gray.
PIL_BIT_DEPTH: dict[str, int] = {
    "L": 8, "LA": 8, "P": 8, "PA": 8, "RGB": 8, "RGBA": 8,
    "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32,
}  # fmt: skip
#: ITU-R 601 luma weights, the ones PIL uses for RGB -> L.
_LUMA = np.array([0.299, 0.587, 0.114])
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class LoadedImage:
    """One 2-D image ready for a model, plus what was learnt reading it (no header identity)."""

    pixels: np.ndarray  # float32 2-D in [0, 1]
    format: str  # dicom | nifti | png | jpeg | tiff | ...
    bit_depth: int  # stored bits per sample (DICOM BitsStored, PIL mode, NIfTI dtype)
    raw_range: tuple[float, float]  # min, max before normalisation (DICOM: after rescale)
    spacing_mm: tuple[float, float] | None = None  # (row, column) pixel spacing
    frame: int = 0  # index of the slice or frame taken from a stack
    n_frames: int = 1
    constant: bool = False  # every pixel had the same value: `pixels` is all zero

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))

    def metadata(self) -> dict[str, Any]:
        """JSON-ready description (no pixels), as `lumbarclip data inspect` prints it."""
        return {
            "format": self.format,
            "shape": list(self.shape),
            "bit_depth": self.bit_depth,
            "spacing_mm": list(self.spacing_mm) if self.spacing_mm else None,
            "frame": self.frame,
            "n_frames": self.n_frames,
            "raw_range": list(self.raw_range),
            "min": float(self.pixels.min()),
            "max": float(self.pixels.max()),
            "constant": self.constant,
        }


def normalise(pixels: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Robust per-image scaling: percentiles `low`..`high` map to 0..1, then clip.

    When the percentiles coincide (a nearly uniform image with a few distinct pixels) the
    full min..max range is used instead, so such detail is not wiped out; a constant image
    gives zeros.
    """
    arr = np.asarray(pixels, dtype=np.float64)  # 32-bit and float inputs keep their range
    if not np.isfinite(arr).all():
        raise InputError("image has NaN or infinite pixel values")
    lo, hi = np.percentile(arr, [low, high])
    if hi <= lo:
        lo, hi = arr.min(), arr.max()
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def load_image(path: str | Path) -> np.ndarray:
    """Read one image (any supported format) as a float32 2-D array in [0, 1]."""
    return read_image(path).pixels


def read_image(path: str | Path, frame: int | None = None) -> LoadedImage:
    """Read one 2-D image with its metadata; `frame` picks a slice of a stack (default middle)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file" + (" (a folder)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    kind = image_format(path)
    reader = {"dicom": _read_dicom, "nifti": _read_nifti}.get(kind, _read_pil)
    raw, info = reader(path, frame)
    return _finish(path, raw, **info)


def image_format(path: Path) -> str:
    """'dicom', 'nifti' or 'pil', from the name and, for other names, the DICOM marker."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if path.suffix.lower() in DICOM_SUFFIXES or not path.suffix:
        return "dicom"
    with path.open("rb") as fh:
        fh.seek(128)
        return "dicom" if fh.read(4) == b"DICM" else "pil"


@contextmanager
def quiet_readers() -> Iterator[None]:
    """Silence reader warnings and pydicom's log records: pydicom's can quote header values.

    Wrap every access to a DICOM dataset's elements in it (values are converted lazily).
    """
    log = logging.getLogger("pydicom")
    was_disabled, log.disabled = log.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.disabled = was_disabled


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def open_dicom(path: str | Path, header_only: bool = False) -> Dataset:
    """pydicom's `dcmread`, retried with `force` for files without the DICM preamble.

    `header_only` stops before the pixel data (fast scans of whole series). Any failure is
    an `InputError`; the dataset itself is for internal use and must not be echoed out.
    """
    path = Path(path)
    with quiet_readers():
        try:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=header_only)
            except InvalidDicomError:
                ds = pydicom.dcmread(path, stop_before_pixels=header_only, force=True)
        except Exception as err:  # any parser failure means the file is not usable DICOM
            raise InputError(f"{path}: not a readable DICOM file ({_first_line(err)})") from None
    if not any(dictionary_has_tag(tag) for tag in ds.keys()):  # what `force` makes of junk
        raise InputError(
            f"{path}: not a readable DICOM file (no standard element; truncated or not DICOM)"
        )
    return ds


def _int_attr(ds: Dataset, keyword: str, default: int | None, path: Path) -> int:
    """An integer attribute, validated; header values that are not integers are refused."""
    value = ds.get(keyword, default)
    try:
        if value is None or value == "":
            raise ValueError("missing")
        return int(value)
    except (TypeError, ValueError):
        raise InputError(f"{path}: DICOM {keyword} is missing or not an integer") from None


def _check_size(path: Path, rows: int, cols: int) -> None:
    if not (1 <= rows <= MAX_SIDE and 1 <= cols <= MAX_SIDE):
        raise InputError(
            f"{path}: header declares {cols} x {rows} pixels; accepted is 1..{MAX_SIDE} per side"
        )


def _pick_frame(path: Path, frame: int | None, n_frames: int) -> int:
    if frame is None:
        return n_frames // 2
    if not 0 <= frame < n_frames:
        raise InputError(f"{path}: frame {frame} out of range; the image has {n_frames}")
    return frame


def _to_gray(arr: np.ndarray) -> np.ndarray:
    """Colour (RGB, RGBA, gray+alpha) to gray; alpha is dropped, gray passes through."""
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return arr[..., :3].astype(np.float64) @ _LUMA
    if arr.ndim == 3 and arr.shape[-1] == 2:
        return arr[..., 0]
    return arr


def _dicom_spacing(ds: Dataset) -> tuple[float, float] | None:
    """PixelSpacing, also from an enhanced multi-frame file's shared functional groups."""
    spacing = ds.get("PixelSpacing")
    if spacing is None:
        try:
            spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        except (AttributeError, IndexError):
            return None
    try:
        row, col = (float(v) for v in spacing)
    except (TypeError, ValueError):
        return None
    return (row, col) if row > 0 and col > 0 else None


def _read_dicom(path: Path, frame: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    with quiet_readers():
        return _decode_dicom(path, open_dicom(path), frame)


def _decode_dicom(path: Path, ds: Dataset, frame: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise InputError(f"{path}: DICOM file without pixel data (not an image)")
    rows = _int_attr(ds, "Rows", None, path)
    cols = _int_attr(ds, "Columns", None, path)
    _check_size(path, rows, cols)
    n_frames = _int_attr(ds, "NumberOfFrames", 1, path)
    if n_frames < 1:
        raise InputError(f"{path}: DICOM NumberOfFrames must be at least 1")
    bits = _int_attr(ds, "BitsStored", _int_attr(ds, "BitsAllocated", 16, path), path)
    if bits < 2:
        raise InputError(f"{path}: {bits}-bit image (a mask, not a scan)")
    index = _pick_frame(path, frame, n_frames)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    samples = _int_attr(ds, "SamplesPerPixel", 1, path)
    try:
        arr = pixel_array(ds, index=index if n_frames > 1 else None)
        if photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
        elif samples == 1:
            arr = apply_modality_lut(arr, ds)
    except Exception as err:  # decoders raise many types; all mean unreadable pixels
        raise InputError(f"{path}: cannot decode DICOM pixel data ({_first_line(err)})") from None
    arr = _to_gray(np.asarray(arr))
    if photometric == "MONOCHROME1" and np.isfinite(arr).all():
        arr = arr.max() + arr.min() - arr.astype(np.float64)  # low values are bright
    info = {"format": "dicom", "bit_depth": bits, "spacing_mm": _dicom_spacing(ds)}
    return arr, {**info, "frame": index, "n_frames": n_frames}


def _read_nifti(path: Path, frame: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    with quiet_readers():
        try:
            img = nib.load(path)
            shape = tuple(int(n) for n in img.shape)
        except Exception as err:  # nibabel raises many types for bad headers
            raise InputError(f"{path}: not a readable NIfTI file ({_first_line(err)})") from None
        if len(shape) < 2 or any(n != 1 for n in shape[3:]):
            raise InputError(f"{path}: expected a 2-D or 3-D NIfTI image, got shape {shape}")
        if any(n < 1 or n > MAX_SIDE for n in shape[:3]) or int(np.prod(shape)) > MAX_VOXELS:
            raise InputError(
                f"{path}: header declares shape {shape}; accepted is 1..{MAX_SIDE} per side "
                f"and {MAX_VOXELS} voxels"
            )
        try:  # reorienting may load the volume: only after the size check
            canon = nib.as_closest_canonical(img)  # RAS+: axis 2 runs inferior -> superior
        except Exception as err:
            raise InputError(f"{path}: NIfTI orientation unusable ({_first_line(err)})") from None
        n_slices = canon.shape[2] if canon.ndim > 2 else 1
        index = _pick_frame(path, frame, n_slices)
        try:
            volume = canon.dataobj if canon.ndim > 2 else np.asarray(canon.dataobj)[..., None]
            axial = np.asarray(volume[:, :, index]).reshape(canon.shape[:2])
        except Exception as err:  # truncated voxel data, bad scaling...
            raise InputError(f"{path}: cannot read NIfTI voxels ({_first_line(err)})") from None
    # RAS (x: left->right, y: posterior->anterior) to the DICOM view: rows anterior->posterior,
    # columns patient right->left.
    pixels = axial[::-1, ::-1].T
    zooms = [round(float(z), 6) for z in canon.header.get_zooms()[:2]]  # float32 in the header
    spacing = (zooms[1], zooms[0]) if min(zooms) > 0 else None
    bits = int(img.get_data_dtype().itemsize * 8)
    info = {"format": "nifti", "bit_depth": bits, "spacing_mm": spacing}
    return pixels, {**info, "frame": index, "n_frames": n_slices}


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png_chunks(path: Path) -> None:
    """Refuse a PNG whose chunk structure or any chunk CRC is wrong.

    Pillow checks the CRCs of the header chunks only, not of the image data (IDAT): a PNG
    with a flipped data byte would otherwise decode to silently wrong pixels.
    """
    data = path.read_bytes()
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 12 > len(data):
            raise InputError(f"{path}: corrupt PNG (truncated chunk at byte {pos})")
        length = int.from_bytes(data[pos : pos + 4], "big")
        end = pos + 8 + length
        if end + 4 > len(data):
            raise InputError(f"{path}: corrupt PNG (chunk at byte {pos} runs past the end of the file)")
        kind = data[pos + 4 : pos + 8]
        if zlib.crc32(data[pos + 4 : end]) != int.from_bytes(data[end : end + 4], "big"):
            raise InputError(f"{path}: corrupt PNG (CRC mismatch in {kind.decode('latin-1')!r} chunk at byte {pos})")
        if kind == b"IEND":
            return
        pos = end + 4
    raise InputError(f"{path}: corrupt PNG (no IEND chunk; truncated)")


def _read_pil(path: Path, frame: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    with path.open("rb") as fh:
        if fh.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE:
            check_png_chunks(path)
    try:
        with Image.open(path) as im:
            cols, rows = im.size
            _check_size(path, rows, cols)
            if im.mode not in PIL_BIT_DEPTH:
                raise InputError(
                    f"{path}: image mode {im.mode!r} is not accepted; use 8- or 16-bit gray "
                    "or 8-bit colour (1-bit masks and float images are refused)"
                )
            n_frames = int(getattr(im, "n_frames", 1))
            index = _pick_frame(path, frame, n_frames)
            im.seek(index)
            fmt, bits = (im.format or "image").lower(), PIL_BIT_DEPTH[im.mode]
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA")
            arr = np.asarray(im)
    except InputError:
        raise
    except Image.DecompressionBombError as err:
        raise InputError(f"{path}: image too large ({_first_line(err)})") from None
    except Exception as err:  # PIL plugins raise OSError, SyntaxError, EOFError...
        raise InputError(f"{path}: cannot read image ({_first_line(err)})") from None
    return arr, {"format": fmt, "bit_depth": bits, "frame": index, "n_frames": n_frames}


def _finish(path: Path, raw: np.ndarray, **info: Any) -> LoadedImage:
    """The checks and the normalisation that every format shares."""
    arr = _to_gray(np.asarray(raw))
    if arr.ndim != 2 or 0 in arr.shape:
        raise InputError(f"{path}: expected a 2-D image, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"{path}: pixel type {arr.dtype} is not a real number")
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: image has NaN or infinite pixel values")
    lo, hi = float(arr.min()), float(arr.max())
    return LoadedImage(pixels=normalise(arr), raw_range=(lo, hi), constant=hi == lo, **info)


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    spacing_mm: tuple[float, float] = (1.0, 1.0),
    overwrite: bool = False,
    **attributes: Any,
) -> Path:
    """Write a 2-D (or frames x rows x cols) uint8/uint16 array as an uncompressed MR DICOM.

    One writer for tests, synthetic cohorts and users. Only technical attributes are set
    (no name, date or institution); `attributes` adds or overrides elements by keyword
    (e.g. ImageOrientationPatient, SeriesDescription, BitsStored=12 with HighBit=11).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists; choose another path or remove it")
    arr = np.asarray(pixels)
    if arr.dtype not in (np.uint8, np.uint16) or arr.ndim not in (2, 3):
        raise InputError(f"write_dicom takes 2-D or 3-D uint8/uint16, got {arr.dtype} {arr.shape}")
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
    ds.Modality = "MR"
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns = arr.shape[-2:]
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = arr.dtype.itemsize * 8
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    ds.PixelSpacing = [float(s) for s in spacing_mm]
    ds.PixelData = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
