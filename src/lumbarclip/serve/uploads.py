"""Uploaded files to a temporary folder the predictor reads: type checks and a guarded unzip.

Every upload keeps the name the client sent for display, and is stored under a safe name made
from it (`safe_name`: letters, digits, `_` and `-` only, the suffix chosen by this module,
numbered on a clash), so a name still tells the predictor what it can (the public dataset's
`T1_0002_D3.png`) but can never become a path elsewhere: no traversal, no overwrite. A zip's
folders are kept the same way, one sanitised component at a time (studies in separate folders
stay apart). Zips are refused when they are encrypted, hold links, or would expand past
`UploadLimits.max_unzipped_bytes` or `max_zip_entries` entries. Entries are inflated here from
their raw deflate stream (zlib with `max_length`), because zipfile stops at the size the header
declares: every produced byte is counted, so a header that understates the size is caught at
the budget (413), and a refused zip leaves no file behind.
"""

from __future__ import annotations

import io
import itertools
import re
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from lumbarclip.data.imageio import DICOM_SUFFIXES, NIFTI_SUFFIXES
from lumbarclip.inference.results import Skipped

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
ACCEPTED = "DICOM (.dcm/.ima/.dicom or the DICM marker), PNG, JPEG, TIFF, NIfTI (.nii/.nii.gz), or a .zip of them"
#: Entries of a zipped DICOM series that are not images and are left out without complaint.
_ZIP_JUNK = re.compile(r"(^|/)(__MACOSX/|\.[^/]*$|DICOMDIR$|Thumbs\.db$)", re.IGNORECASE)
_CHUNK = 1 << 20


class UploadError(Exception):
    """A refused upload: `status` is the HTTP answer (413, 415 or 422), the message the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class UploadLimits:
    max_upload_bytes: int = 50 * 2**20
    max_unzipped_bytes: int = 500 * 2**20
    max_zip_entries: int = 5000
    max_files: int = 200


@dataclass
class SavedUploads:
    """What the predictor is given, and how to name each stored path back to the client."""

    inputs: list[Path] = field(default_factory=list)  # files, and one folder per zip
    names: dict[str, str] = field(default_factory=dict)  # stored path -> display name
    skipped: list[Skipped] = field(default_factory=list)  # zip entries left out, with why

    def display(self, path: str | Path) -> str:
        return self.names.get(str(path), Path(path).name)


def display_name(name: str | None, fallback: str) -> str:
    """The client's file name reduced to printable characters, at most 120 of them."""
    clean = re.sub(r"[^\w.\-+ ()\[\]/:]", "_", (name or "").replace("\\", "/"))[-120:].strip()
    return clean or fallback


def kind_of(name: str, head: bytes) -> str:
    """'zip', 'dicom', 'nifti' or 'image', from the content's signature first, then the name;
    UploadError 415 for anything else."""
    lower = name.lower()
    if head.startswith(b"PK\x03\x04") or lower.endswith(".zip"):
        return "zip"
    if head[128:132] == b"DICM":
        return "dicom"
    if lower.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")) or lower.endswith(IMAGE_SUFFIXES):
        return "image"
    suffix = PurePosixPath(lower).suffix
    if suffix in DICOM_SUFFIXES or not suffix:
        return "dicom"  # DICOM without the preamble: the reader decides
    raise UploadError(415, f"{name}: unsupported type ({suffix}); send {ACCEPTED}")


def safe_name(name: str, kind: str, folder: Path) -> Path:
    """A new file path in `folder` named after the client's `name` (last component only,
    characters outside [A-Za-z0-9_-] replaced, suffix from `kind`), numbered if taken."""
    base = PurePosixPath(name.replace("\\", "/")).name
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", base.split(".")[0])[:80].strip("_-") or "upload"
    suffix = _suffix(name, kind)
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}{suffix}"
    return path


def _safe_folder(root: Path, entry_name: str, max_depth: int = 8) -> Path:
    """`root` plus the zip entry's folders, each component sanitised; '.', '..' and empty dropped."""
    parts = [re.sub(r"[^A-Za-z0-9_-]", "_", p)[:60] for p in PurePosixPath(entry_name.replace("\\", "/")).parts[:-1]]
    parts = [p for p in parts if p.strip("_")][:max_depth]
    folder = root.joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _suffix(name: str, kind: str) -> str:
    lower = name.lower()
    if kind == "nifti":
        return ".nii.gz" if lower.endswith(".gz") else ".nii"
    suffix = PurePosixPath(lower).suffix
    if kind == "image" and suffix in IMAGE_SUFFIXES:
        return suffix
    return {"dicom": ".dcm", "image": ".png"}.get(kind, suffix)


def save_uploads(files: list[tuple[str, bytes]], folder: Path, limits: UploadLimits) -> SavedUploads:
    """Write uploads (display name, content) under `folder`, unzipping zips into a subfolder each.

    All zips of one request share one `max_unzipped_bytes` budget; a refused zip leaves nothing
    of itself behind (its subfolder is removed before the UploadError leaves)."""
    if not files:
        raise UploadError(422, "no files: send one or more files in the multipart field 'files'")
    if len(files) > limits.max_files:
        raise UploadError(413, f"{len(files)} files in one request; at most {limits.max_files}")
    saved = SavedUploads()
    kinds = [kind_of(name, data[:132]) for name, data in files]  # 415 before anything is written
    budget = [limits.max_unzipped_bytes]
    for i, ((name, data), kind) in enumerate(zip(files, kinds, strict=True)):
        if not data:
            raise UploadError(422, f"{name}: empty file (0 bytes)")
        if kind == "zip":
            target = folder / f"zip{i:03d}"
            try:
                _unzip(name, data, target, limits, saved, budget)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
            saved.inputs.append(target)
            saved.names[str(target)] = name
        else:
            (folder / "files").mkdir(exist_ok=True)
            path = safe_name(name, kind, folder / "files")
            path.write_bytes(data)
            saved.inputs.append(path)
            saved.names[str(path)] = name
    return saved


def _unzip(
    name: str, data: bytes, target: Path, limits: UploadLimits, saved: SavedUploads, budget: list[int]
) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as err:
        raise UploadError(422, f"{name}: not a readable zip ({err})") from None
    entries = [e for e in archive.infolist() if not e.is_dir()]
    if len(entries) > limits.max_zip_entries:
        raise UploadError(413, f"{name}: {len(entries)} entries; at most {limits.max_zip_entries}")
    declared = sum(e.file_size for e in entries)
    if declared > budget[0]:
        raise UploadError(413, f"{name}: expands to {declared} bytes; at most {limits.max_unzipped_bytes}")
    target.mkdir()
    try:
        kept = _extract(name, data, entries, target, limits, saved, budget)
    except zlib.error as err:
        raise UploadError(422, f"{name}: corrupt zip ({str(err)[:200]})") from None
    if not kept:
        raise UploadError(422, f"{name}: no image files in the zip")


def _extract(
    name: str, data: bytes, entries: list[zipfile.ZipInfo], target: Path,
    limits: UploadLimits, saved: SavedUploads, budget: list[int],
) -> int:
    """Inflate each kept entry into `target`, taking every byte out of `budget[0]` as it is
    produced: the header's sizes are not trusted (`_inflate`)."""
    kept = 0
    for j, entry in enumerate(entries):
        entry_name = display_name(entry.filename, f"entry{j}")
        shown = f"{name}:{entry_name}"
        if entry.flag_bits & 0x1:
            raise UploadError(422, f"{shown}: encrypted zip entry")
        if stat.S_ISLNK(entry.external_attr >> 16):
            raise UploadError(422, f"{shown}: a link inside the zip is refused")
        if _ZIP_JUNK.search(entry.filename):
            continue
        chunks = _inflate(shown, data, entry)
        head = b""
        for chunk in chunks:
            head += chunk
            if len(head) >= 132:
                break
        try:
            kind = kind_of(entry.filename, head[:132])
        except UploadError as err:
            saved.skipped.append(Skipped(input=shown, reason=err.reason.split(": ", 1)[1]))
            continue
        if kind == "zip":
            saved.skipped.append(Skipped(input=shown, reason="a zip inside the zip is not opened"))
            continue
        path = safe_name(entry.filename, kind, _safe_folder(target, entry.filename))
        written = 0
        with path.open("wb") as out:
            for chunk in itertools.chain((head,), chunks):
                budget[0] -= len(chunk)
                if budget[0] < 0:
                    raise UploadError(413, f"{name}: expands past {limits.max_unzipped_bytes} bytes unzipped")
                out.write(chunk)
                written += len(chunk)
        if written != entry.file_size:  # within budget, but the header lied: not a zip to trust
            raise UploadError(422, f"{shown}: {written} bytes unzipped, the header says {entry.file_size}")
        saved.names[str(path)] = shown
        kept += 1
    return kept


def _inflate(shown: str, data: bytes, entry: zipfile.ZipInfo) -> Iterator[bytes]:
    """The entry's bytes, at most `_CHUNK` at a time, read from its raw stream here rather than
    through zipfile, which stops at the size the header declares (so a header that understates
    the size would hide how far the entry really expands). The CRC is checked at the end."""
    start = entry.header_offset
    local = data[start : start + 30]
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise UploadError(422, f"{shown}: corrupt zip (no local header at offset {start})")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    begin = start + 30 + name_len + extra_len
    raw = memoryview(data)[begin : begin + entry.compress_size]
    crc = 0
    if entry.compress_type == zipfile.ZIP_STORED:
        for pos in range(0, len(raw), _CHUNK):
            chunk = bytes(raw[pos : pos + _CHUNK])
            crc = zlib.crc32(chunk, crc)
            yield chunk
    elif entry.compress_type == zipfile.ZIP_DEFLATED:
        inflater, pos = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while not inflater.eof:
            if inflater.unconsumed_tail:
                feed: bytes | memoryview = inflater.unconsumed_tail
            elif pos < len(raw):
                feed, pos = raw[pos : pos + _CHUNK], pos + _CHUNK
            else:
                raise UploadError(422, f"{shown}: corrupt zip (compressed data ends early)")
            chunk = inflater.decompress(feed, _CHUNK)
            crc = zlib.crc32(chunk, crc)
            if chunk:
                yield chunk
    else:
        raise UploadError(
            422, f"{shown}: zip compression method {entry.compress_type} is not supported; use deflate or store"
        )
    if crc != entry.CRC:
        raise UploadError(422, f"{shown}: corrupt zip (CRC mismatch)")
