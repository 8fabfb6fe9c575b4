"""The DICOM node: a pynetdicom Storage SCP that assembles studies as they arrive, and a worker
that analyses each complete study and sends the results on by C-STORE.

Why this shape: a PACS sends a study as a stream of C-STORE requests, possibly over several
associations and interleaved with other studies, and never says "this is the last one". So
instances are written to a per-study folder as they come (keyed by StudyInstanceUID: two
interleaved studies never mix), and a study counts as complete once no instance of it has
arrived for `quiet_s` seconds. One worker thread then processes complete studies one at a
time (the model is loaded once and CPU-bound); an exception in one study is logged, its files
are kept under `failed/`, and the worker goes on with the next. Logs name studies only by
their keyed hash (`lumbarclip.data.privacy`), never by patient name, ID, date or UID.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from lumbarclip.data.privacy import pseudonymise
from lumbarclip.errors import InputError

log = logging.getLogger("lumbarclip.pacs")

#: C-STORE statuses: success; cannot understand (no study/instance UID, no pixels, undecodable).
#: A well-formed non-MR instance (a CT, or the SR we wrote, when a PACS re-sends a whole study)
#: is acknowledged but skipped: refusing it would fail the sender's whole transfer job.
STATUS_OK, STATUS_MALFORMED = 0x0000, 0xC000
#: Modalities the node analyses.
ACCEPTED_MODALITIES = ("MR",)

#: Turns a complete study (a folder holding its instances) into the result datasets to send back.
Processor = Callable[[Path], Sequence[Dataset]]


@dataclass(frozen=True)
class Destination:
    """A DICOM node to C-STORE results to."""

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> Destination:
        """`HOST:PORT:AET`, e.g. `127.0.0.1:4242:ORTHANC`."""
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2] or not parts[0]:
            raise InputError(f"--dest must be HOST:PORT:AET (e.g. 127.0.0.1:4242:ORTHANC); got {text!r}")
        return cls(parts[0], int(parts[1]), parts[2])


@dataclass
class NodeConfig:
    """How the node listens and when a study counts as complete."""

    ae_title: str = "LUMBARCLIP"
    host: str = "127.0.0.1"
    port: int = 11112
    quiet_s: float = 60.0  # Orthanc's own StableAge default
    work_dir: Path = Path("pacs-work")
    salt: str = field(default_factory=lambda: secrets.token_hex(16))
    poll_s: float = 0.1

    def __post_init__(self) -> None:
        if not 1 <= len(self.ae_title) <= 16:
            raise InputError(f"AE title must be 1..16 characters; got {self.ae_title!r}")
        if self.quiet_s < 0:
            raise InputError(f"quiet time must be >= 0 seconds; got {self.quiet_s}")
        self.work_dir = Path(self.work_dir)


@dataclass
class StudyRecord:
    """What happened to one study: for the caller, the tests and the benchmark."""

    study: str  # hashed StudyInstanceUID
    n_instances: int
    last_received: float  # time.monotonic() of the study's last instance
    finished: float = 0.0  # time.monotonic() when results were delivered (or it failed)
    ok: bool = False
    error: str = ""
    sent: list[str] = field(default_factory=list)  # SOPInstanceUIDs of the results


@dataclass
class _Pending:
    folder: Path
    last: float
    count: int = 0


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
                pending = self._pending[study_uid] = _Pending(folder, time.monotonic())
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
                    self._pending[uid] = _Pending(folder, time.monotonic(), len(files))
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
    """Write `ds` to `path` so that it is either absent or complete and on disk: a temporary
    name in the same folder, fsync, rename, fsync of the folder. Done before the success status."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            ds.save_as(fh, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _valid_uid(value: object) -> bool:
    return bool(value) and UID(str(value)).is_valid


def check_instance(ds: Dataset) -> str:
    """What to do with an incoming data set: "ok", "not_mr" (skip) or "malformed" (refuse).
    Study, series and instance UIDs must be valid DICOM UIDs (digits and dots, <= 64 chars)."""
    try:
        if not _valid_uid(ds.get("StudyInstanceUID")) or not _valid_uid(ds.get("SOPInstanceUID")):
            return "malformed"
        if "SeriesInstanceUID" in ds and not _valid_uid(ds.get("SeriesInstanceUID")):
            return "malformed"
        if str(ds.get("Modality", "")).upper() not in ACCEPTED_MODALITIES:
            return "not_mr"
        if "PixelData" not in ds:
            return "malformed"
    except Exception:  # undecodable elements surface on first access
        return "malformed"
    return "ok"


def send_datasets(datasets: Sequence[Dataset], dest: Destination, ae_title: str) -> list[str]:
    """C-STORE `datasets` to `dest` in one association; returns the stored SOPInstanceUIDs.
    ConnectionError (exit 2 on the CLI) when the association fails or a store is refused."""
    ae = AE(ae_title=ae_title)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        raise ConnectionError(f"could not associate with {dest.ae_title}@{dest.host}:{dest.port}")
    stored = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code != STATUS_OK:
                raise ConnectionError(f"{dest.ae_title} answered C-STORE with status {code}")
            stored.append(str(ds.SOPInstanceUID))
    finally:
        assoc.release()
    return stored


class PacsNode:
    """Storage SCP + study worker. `start()` listens; `stop()` drains and shuts down.

    `process` turns a complete study's folder into result datasets (`lumbarclip.pacs.analyse`);
    `deliver` sends them on (by default C-STORE to `dest`) and returns the stored UIDs.
    """

    def __init__(
        self,
        config: NodeConfig,
        process: Processor,
        deliver: Callable[[Sequence[Dataset]], list[str]],
    ) -> None:
        self.config = config
        self.process = process
        self.deliver = deliver
        self.assembler = StudyAssembler(config.work_dir, config.salt)
        self.records: list[StudyRecord] = []
        self.skipped: dict[str, int] = {"not_mr": 0, "malformed": 0}
        self._skip_lock = threading.Lock()  # associations run in threads of their own
        self._busy = False
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._server = None
        self._ae = AE(ae_title=config.ae_title)
        self._ae.supported_contexts = StoragePresentationContexts
        self._ae.add_supported_context(Verification)

    # --- SCP -----------------------------------------------------------------------------

    def _skip(self, kind: str) -> None:
        with self._skip_lock:
            self.skipped[kind] += 1

    def _on_store(self, event: evt.Event) -> int:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
        except Exception as err:  # a data set that does not decode
            self._skip("malformed")
            log.warning("refused an undecodable instance (%s)", type(err).__name__)
            return STATUS_MALFORMED
        verdict = check_instance(ds)
        if verdict == "not_mr":
            self._skip("not_mr")
            log.warning("skipped a non-MR instance (modality %s)", str(ds.get("Modality", "?"))[:8])
            return STATUS_OK
        if verdict != "ok":
            self._skip("malformed")
            log.warning("refused a malformed instance (no study/instance UID or no pixels)")
            return STATUS_MALFORMED
        try:
            tag = self.assembler.add(ds)
        except Exception as err:
            self._skip("malformed")
            log.warning("could not store an instance (%s)", type(err).__name__)
            return STATUS_MALFORMED
        log.debug("received an instance of study %s", tag)
        return STATUS_OK

    def start(self) -> PacsNode:
        """Queue what an earlier run left unfinished, listen on host:port, start the worker."""
        recovered = self.assembler.recover()
        if recovered:
            log.info("re-queued %d unfinished studies left in %s", recovered, self.config.work_dir)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: STATUS_OK)]
        self._server = self._ae.start_server(
            (self.config.host, self.config.port), block=False, evt_handlers=handlers
        )
        self._worker = threading.Thread(target=self._work, name="lumbarclip-pacs-worker", daemon=True)
        self._worker.start()
        log.info(
            "listening as %s on %s:%d (study complete after %.1f s quiet)",
            self.config.ae_title,
            self.config.host,
            self.port,
            self.config.quiet_s,
        )
        return self

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one the OS chose for port 0)."""
        if self._server is None:
            return self.config.port
        return int(self._server.server_address[1])

    def stop(self, drain: bool = True) -> None:
        """Stop accepting; with `drain`, process the studies still pending first."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._stop.set()
        if self._worker is not None:
            self._worker.join()  # finishes the study in hand
            self._worker = None
        while drain and (item := self.assembler.pop_quiet(0.0)) is not None:
            self._handle(*item)
        log.info("stopped")

    def serve_forever(self) -> None:
        """Block until Ctrl-C or SIGTERM (a service manager's stop), then drain and stop."""
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0):
            pass
        log.info("stopping: finishing pending studies")
        self.stop()

    def wait_idle(self, timeout: float, n_records: int = 0) -> bool:
        """Wait until nothing is pending or processing and at least `n_records` studies are done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not len(self.assembler) and not self._busy and len(self.records) >= n_records:
                return True
            time.sleep(0.05)
        return False

    # --- worker --------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            self._busy = True  # before the pop, so wait_idle never sees a study in no state
            item = self.assembler.pop_quiet(self.config.quiet_s)
            if item is None:
                self._busy = False
                self._stop.wait(self.config.poll_s)
                continue
            try:
                self._handle(*item)
            except Exception:  # the failure handling itself failed (disk full, ...): log, go on
                log.exception("study %s: could not record its failure; the worker goes on", item[0])
            finally:
                self._busy = False

    def _handle(self, tag: str, pending: _Pending) -> None:
        self._busy = True
        record = StudyRecord(tag, pending.count, pending.last)
        try:
            log.info("study %s complete: %d instances", tag, pending.count)
            results = list(self.process(pending.folder))
            record.sent = self.deliver(results)
            record.ok = True
            shutil.rmtree(pending.folder, ignore_errors=True)
            log.info("study %s done: %d result instances sent", tag, len(record.sent))
        except Exception as err:  # one study's failure never stops the node
            record.error = f"{type(err).__name__}: {err}"
            kept = self.config.work_dir / "failed" / pending.folder.name
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(pending.folder), kept)
            # our own InputErrors name no header value; other messages might, so only their type
            reason = str(err) if isinstance(err, InputError) else type(err).__name__
            log.error("study %s failed (%s); its files are kept in %s", tag, reason, kept)
        finally:
            record.finished = time.monotonic()
            self.records.append(record)
            self._busy = False
