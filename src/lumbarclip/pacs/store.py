"""The DICOM node's work folder: every state a study passes through, on disk, so that a node
killed at any moment loses nothing it acknowledged and delivers everything it produced.

- `incoming/<tag>-<rand>/`: instances being received, one folder per study batch.
- `outbox/<tag>-<rand>/`: result datasets not yet delivered, with `state.json` (attempts, when
  to try next); kept across restarts and retried with backoff.
- `done/<tag>-<rand>/`: a delivered study's instances and, under `sr/`, the SRs sent for it;
  kept so that a late instance re-analyses the merged study and the new SR names the old ones.

Files are named by a hash of their UID, never by a header value, and written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset

from lumbarclip.data.privacy import pseudonymise

log = logging.getLogger("lumbarclip.pacs")


@dataclass
class _Pending:
    folder: Path
    last: float
    count: int = 0
    uid: str = ""


class StudyAssembler:
    """Per-study folders of received instances, and which studies have gone quiet."""

    def __init__(self, root: Path, salt: str) -> None:
        self.root = Path(root)
        self.salt = salt
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()

    def tag(self, study_uid: str) -> str:
        """The study's name in logs and folders: a keyed hash, never the UID itself."""
        return pseudonymise(study_uid, self.salt)

    def add(self, ds: Dataset) -> str:
        """Store one instance under its study; returns the study's tag."""
        study_uid = str(ds.StudyInstanceUID)
        tag = self.tag(study_uid)
        with self._lock:
            pending = self._pending.get(study_uid)
            if pending is None:
                folder = self.root / "incoming" / f"{tag}-{secrets.token_hex(4)}"
                folder.mkdir(parents=True, exist_ok=True)
                pending = self._pending[study_uid] = _Pending(folder, time.monotonic(), uid=study_uid)
            path = pending.folder / instance_file_name(str(ds.SOPInstanceUID))
            new = not path.exists()  # the same SOPInstanceUID again replaces that instance only
            write_atomic(ds, path)
            pending.count += int(new)
            pending.last = time.monotonic()
        return tag

    def recover(self) -> int:
        """Queue again the studies an earlier run received but never finished (its process
        was killed): each folder left under incoming/ becomes a pending study. Returns how many."""
        recovered = 0
        for folder in sorted((self.root / "incoming").glob("*")):
            files = sorted(folder.glob("*.dcm"))
            uids, unreadable = set(), []
            for f in files:  # every file is tried: one bad file does not hide the study
                try:
                    uids.add(str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID))
                except Exception:
                    unreadable.append(f)
            if unreadable:  # kept for inspection, out of the study's files
                (folder / "unreadable").mkdir(exist_ok=True)
                for f in unreadable:
                    shutil.move(str(f), folder / "unreadable" / f.name)
                log.warning(
                    "recovery: %d of %d files in %s are unreadable; moved to its unreadable/ folder",
                    len(unreadable), len(files), folder.name,
                )  # fmt: skip
                files = [f for f in files if f not in unreadable]
            if len(uids) != 1:  # empty, all unreadable, or mixed: left for a person to look at
                if files:
                    log.warning("recovery: %s holds %d studies; left for inspection", folder.name, len(uids))
                continue
            uid = uids.pop()
            with self._lock:
                pending = self._pending.get(uid)
                if pending is None:
                    self._pending[uid] = _Pending(folder, time.monotonic(), len(files), uid)
                else:  # two unfinished batches of one study become one
                    for f in files:
                        shutil.move(str(f), pending.folder / f.name)
                    shutil.rmtree(folder, ignore_errors=True)
                    pending.count = len(list(pending.folder.glob("*.dcm")))
            recovered += 1
        return recovered

    def pop_quiet(self, quiet_s: float, now: float | None = None) -> tuple[str, _Pending] | None:
        """The study quiet the longest (at least `quiet_s`), removed from the pending set.
        An instance of it arriving later starts a new batch of that study."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [(p.last, uid) for uid, p in self._pending.items() if now - p.last >= quiet_s]
            if not due:
                return None
            _, uid = min(due)
            return self.tag(uid), self._pending.pop(uid)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)


def instance_file_name(sop_instance_uid: str) -> str:
    """A received instance's file name: a hash of its UID, never the header value itself (a
    sender controls it, e.g. '/etc/x' or '../../x')."""
    return hashlib.sha256(sop_instance_uid.encode("utf-8", "surrogateescape")).hexdigest()[:32] + ".dcm"


def write_atomic(ds: Dataset, path: Path) -> None:
    """Write `ds` to `path` so that it is either absent or complete and on disk (`_replace`).
    Done before the success status."""
    _replace(path, lambda fh: ds.save_as(fh, enforce_file_format=True))


def _write_json_atomic(data: dict, path: Path) -> None:
    _replace(path, lambda fh: fh.write(json.dumps(data).encode()))


def _replace(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write` to a temporary name in `path`'s folder, fsync, rename over `path`, fsync the folder."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_sorted(folder: Path) -> list[Dataset]:
    return [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]


@dataclass
class OutboxItem:
    """One study's undelivered results."""

    folder: Path
    attempts: int = 0
    due: float = 0.0  # time.time() of the next attempt (wall clock: survives a restart)

    @property
    def tag(self) -> str:
        return self.folder.name.rsplit("-", 1)[0]


class Outbox:
    """Results written before the first delivery attempt and removed only once delivered."""

    def __init__(self, work_dir: Path) -> None:
        self.root = Path(work_dir) / "outbox"

    def put(self, tag: str, datasets: Sequence[Dataset]) -> OutboxItem:
        """Keep `datasets` on disk (atomically, in order) until `delivered`."""
        folder = self.root / f"{tag}-{secrets.token_hex(4)}"
        folder.mkdir(parents=True)
        for i, ds in enumerate(datasets):
            write_atomic(ds, folder / f"{i:04d}-{instance_file_name(str(ds.SOPInstanceUID))}")
        item = OutboxItem(folder, 0, time.time())
        self._save(item)
        return item

    def load(self, item: OutboxItem) -> list[Dataset]:
        """The item's datasets, in the order they were put."""
        return _read_sorted(item.folder)

    def items(self) -> list[OutboxItem]:
        """Every undelivered item, oldest due first (a missing or broken state: due now)."""
        out = []
        for folder in sorted(p for p in self.root.glob("*") if p.is_dir()):
            try:
                state = json.loads((folder / "state.json").read_text())
                out.append(OutboxItem(folder, int(state["attempts"]), float(state["due"])))
            except (OSError, ValueError, KeyError, TypeError):
                out.append(OutboxItem(folder))
        return sorted(out, key=lambda item: item.due)

    def due(self, now: float | None = None) -> list[OutboxItem]:
        """The items whose next attempt is due."""
        now = time.time() if now is None else now
        return [item for item in self.items() if item.due <= now]

    def failed(self, item: OutboxItem, wait_s: float) -> None:
        """Count a failed attempt and schedule the next one `wait_s` from now."""
        item.attempts += 1
        item.due = time.time() + wait_s
        self._save(item)

    def reschedule(self, item: OutboxItem, due: float) -> None:
        """Move the item's next attempt to `due` (time.time())."""
        item.due = due
        self._save(item)

    def delivered(self, item: OutboxItem) -> None:
        shutil.rmtree(item.folder, ignore_errors=True)

    def _save(self, item: OutboxItem) -> None:
        _write_json_atomic({"attempts": item.attempts, "due": item.due}, item.folder / "state.json")


class DeliveredStudies:
    """Delivered studies kept for `keep_s`, keyed by StudyInstanceUID: a late instance merges
    with them, and the SRs already sent become the predecessors of the amended one."""

    def __init__(self, work_dir: Path, keep_s: float) -> None:
        self.root = Path(work_dir) / "done"
        self.keep_s = keep_s
        self._index: dict[str, Path] = {}
        self._lock = threading.Lock()

    def load(self) -> int:
        """Index what an earlier run kept (by reading one instance of each folder)."""
        for folder in sorted(p for p in self.root.glob("*") if p.is_dir()):
            for f in sorted(folder.glob("*.dcm")):
                try:
                    uid = str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)
                except Exception:
                    continue
                self._index[uid] = folder
                break
        return len(self._index)

    def merge_into(self, study_uid: str, folder: Path) -> list[Dataset]:
        """Move the kept instances of `study_uid` into `folder` (an instance received again
        keeps its newer copy) with its SRs under `folder/sr/`; return all SRs sent so far."""
        with self._lock:
            old = self._index.pop(study_uid, None)
        if old is not None and old.is_dir():
            (folder / "sr").mkdir(exist_ok=True)
            for f in old.glob("*.dcm"):
                if not (folder / f.name).exists():
                    os.replace(f, folder / f.name)
            for f in (old / "sr").glob("*.dcm"):
                os.replace(f, folder / "sr" / f.name)
            _fsync_dir(folder)
            shutil.rmtree(old, ignore_errors=True)
        return _read_sorted(folder / "sr") if (folder / "sr").is_dir() else []

    def keep(self, study_uid: str, tag: str, folder: Path, reports: Sequence[Dataset]) -> None:
        """Keep a delivered study's folder with the SRs just produced (or delete it, keep_s 0)."""
        if self.keep_s <= 0:
            shutil.rmtree(folder, ignore_errors=True)
            return
        (folder / "sr").mkdir(exist_ok=True)
        for ds in reports:
            write_atomic(ds, folder / "sr" / instance_file_name(str(ds.SOPInstanceUID)))
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / f"{tag}-{secrets.token_hex(4)}"
        os.replace(folder, target)
        (target / "kept").touch()
        with self._lock:
            self._index[study_uid] = target

    def purge(self, now: float | None = None) -> int:
        """Delete studies kept longer than `keep_s`; returns how many."""
        now = time.time() if now is None else now
        with self._lock:
            old = [
                (uid, f) for uid, f in self._index.items()
                if now - _mtime(f / "kept", default=now) > self.keep_s
            ]  # fmt: skip
            for uid, _ in old:
                del self._index[uid]
        for _, folder in old:
            shutil.rmtree(folder, ignore_errors=True)
        return len(old)

    def __contains__(self, study_uid: str) -> bool:
        with self._lock:
            return study_uid in self._index


def _mtime(path: Path, default: float) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return default
