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

The work folder holds every state a study can be in, so that a killed node loses nothing
it acknowledged: `incoming/` (received, written and fsynced before the success status),
`outbox/` (results not yet delivered, retried with exponential backoff), `done/` (a delivered
study's instances and SRs, kept `keep_s` so that a late instance re-analyses the merged study
and yields an amended SR that names the earlier one) and `failed/`.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from lumbarclip.errors import InputError
from lumbarclip.pacs.store import (
    DeliveredStudies,
    Outbox,
    OutboxItem,
    StudyAssembler,
    _Pending,
    instance_file_name,
    write_atomic,
)

__all__ = [
    "ACCEPTED_MODALITIES", "Destination", "NodeConfig", "PacsNode", "StudyAssembler", "StudyRecord",
    "check_instance", "instance_file_name", "send_datasets", "write_atomic",
]  # fmt: skip

log = logging.getLogger("lumbarclip.pacs")

#: C-STORE statuses: success; cannot understand (no study/instance UID, no pixels, undecodable).
#: A well-formed non-MR instance (a CT, or the SR we wrote, when a PACS re-sends a whole study)
#: is acknowledged but skipped: refusing it would fail the sender's whole transfer job.
STATUS_OK, STATUS_MALFORMED = 0x0000, 0xC000
#: Modalities the node analyses.
ACCEPTED_MODALITIES = ("MR",)

#: Turns a complete study (a folder holding its instances) into the result datasets to send back;
#: the second argument holds the SRs already delivered for the study (empty the first time), which
#: the new SR names as its predecessors.
Processor = Callable[[Path, Sequence[Dataset]], Sequence[Dataset]]


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
    allow_ae: tuple[str, ...] = ()  # calling AE titles accepted; empty: any
    max_associations: int = 10  # more at once are rejected (A-ASSOCIATE-RJ, transient)
    retry_s: float = 30.0  # first wait before delivering again; doubles up to retry_max_s
    retry_max_s: float = 3600.0
    keep_s: float = 86400.0  # how long a delivered study is kept for late instances; 0: not kept

    def __post_init__(self) -> None:
        if not 1 <= len(self.ae_title) <= 16:
            raise InputError(f"AE title must be 1..16 characters; got {self.ae_title!r}")
        for title in self.allow_ae:
            if not 1 <= len(title) <= 16:
                raise InputError(f"allowed AE title must be 1..16 characters; got {title!r}")
        if self.quiet_s < 0:
            raise InputError(f"quiet time must be >= 0 seconds; got {self.quiet_s}")
        if self.max_associations < 1:
            raise InputError(f"at least 1 association must be allowed; got {self.max_associations}")
        if self.retry_s <= 0 or self.retry_max_s < self.retry_s:
            raise InputError(f"retry waits must satisfy 0 < retry ({self.retry_s}) <= max ({self.retry_max_s})")
        if self.keep_s < 0:
            raise InputError(f"keep time must be >= 0 seconds; got {self.keep_s}")
        self.work_dir = Path(self.work_dir)

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after `attempts` failed deliveries: retry_s, 2x, 4x, ... capped."""
        return min(self.retry_s * 2 ** max(attempts - 1, 0), self.retry_max_s)


@dataclass
class StudyRecord:
    """What happened to one study: for the caller, the tests and the benchmark."""

    study: str  # hashed StudyInstanceUID
    n_instances: int
    last_received: float  # time.monotonic() of the study's last instance
    finished: float = 0.0  # time.monotonic() when results were delivered (or it failed)
    ok: bool = False  # analysed and delivered
    error: str = ""
    sent: list[str] = field(default_factory=list)  # SOPInstanceUIDs of the results
    attempts: int = 0  # delivery attempts so far
    amends: list[str] = field(default_factory=list)  # SOPInstanceUIDs of the SRs it replaces


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
        self.outbox = Outbox(config.work_dir)
        self.delivered = DeliveredStudies(config.work_dir, config.keep_s)
        self.records: list[StudyRecord] = []
        self._in_outbox: dict[str, StudyRecord] = {}  # outbox folder name -> its study's record
        self._last_purge = 0.0
        self.skipped: dict[str, int] = {"not_mr": 0, "malformed": 0}
        self._skip_lock = threading.Lock()  # associations run in threads of their own
        self._busy = False
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._server = None
        self._ae = AE(ae_title=config.ae_title)
        self._ae.require_calling_aet = list(config.allow_ae)  # others: A-ASSOCIATE-RJ
        self._ae.maximum_associations = config.max_associations
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
        undelivered = self.outbox.items()
        for item in undelivered:  # a restart is when the operator has fixed the destination
            self.outbox.reschedule(item, time.time())
        if undelivered:
            log.info("%d studies' results are still to be delivered; retrying them now", len(undelivered))
        self.delivered.load()
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
            try:
                self._retry_due()
                self._purge()
            except Exception:  # e.g. an unreadable outbox file: logged, the node goes on
                log.exception("retrying deliveries failed; the worker goes on")
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

    def _purge(self) -> None:
        if time.monotonic() - self._last_purge >= 60.0:
            self._last_purge = time.monotonic()
            if n := self.delivered.purge():
                log.info("deleted %d delivered studies kept longer than %.0f s", n, self.config.keep_s)

    def _handle(self, tag: str, pending: _Pending) -> None:
        """Analyse one complete study (merged with what was delivered for it before), put the
        results in the outbox, keep the study for late instances, then try to deliver."""
        self._busy = True
        record = StudyRecord(tag, pending.count, pending.last)
        try:
            previous = self.delivered.merge_into(pending.uid, pending.folder) if pending.uid else []
            record.n_instances = len(list(pending.folder.glob("*.dcm")))
            record.amends = [str(ds.SOPInstanceUID) for ds in previous]
            log.info(
                "study %s complete: %d instances%s", tag, record.n_instances,
                f" (amends {len(previous)} earlier report(s))" if previous else "",
            )  # fmt: skip
            results = list(self.process(pending.folder, previous))
            item = self.outbox.put(tag, results)
            reports = [ds for ds in results if str(ds.get("Modality", "")) == "SR"]
            self.delivered.keep(pending.uid, tag, pending.folder, reports)
        except Exception as err:  # one study's failure never stops the node
            record.error = f"{type(err).__name__}: {err}"
            record.finished = time.monotonic()
            self.records.append(record)
            kept = self.config.work_dir / "failed" / pending.folder.name
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(pending.folder), kept)
            # our own InputErrors name no header value; other messages might, so only their type
            reason = str(err) if isinstance(err, InputError) else type(err).__name__
            log.error("study %s failed (%s); its files are kept in %s", tag, reason, kept)
            return
        finally:
            self._busy = False
        self.records.append(record)
        self._in_outbox[item.folder.name] = record
        self._deliver(item)

    def _deliver(self, item: OutboxItem) -> None:
        """One delivery attempt; on failure the results stay in the outbox with a backoff."""
        record = self._in_outbox.get(item.folder.name)
        if record is None:  # left by an earlier run
            record = self._in_outbox[item.folder.name] = StudyRecord(item.tag, 0, 0.0)
            self.records.append(record)
        record.attempts = item.attempts + 1
        try:
            record.sent = self.deliver(self.outbox.load(item))
        except Exception as err:
            wait = self.config.backoff(record.attempts)
            self.outbox.failed(item, wait)
            record.error = f"delivery failed: {type(err).__name__}"
            log.warning(
                "study %s: delivery attempt %d failed (%s); results kept in %s, next try in %.0f s",
                item.tag, record.attempts, type(err).__name__, item.folder, wait,
            )  # fmt: skip
        else:
            self.outbox.delivered(item)
            del self._in_outbox[item.folder.name]
            record.ok, record.error = True, ""
            log.info("study %s done: %d result instances sent", item.tag, len(record.sent))
        finally:
            record.finished = time.monotonic()

    def _retry_due(self) -> None:
        for item in self.outbox.due():
            if self._stop.is_set():
                return
            self._deliver(item)
