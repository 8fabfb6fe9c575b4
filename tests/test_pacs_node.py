"""The DICOM node over real DICOM networking (pynetdicom SCU -> our SCP), with a stand-in
processor, so that assembly, refusal, isolation and log privacy are tested without a model."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from lumbarclip.pacs.node import (
    STATUS_MALFORMED,
    Destination,
    NodeConfig,
    PacsNode,
)
from lumbarclip.synth.cohort import CohortConfig, make_cohort
from lumbarclip.errors import InputError


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, list[Path]]:
    """Two synthetic patients as DICOM: {StudyInstanceUID: files}."""
    out = tmp_path_factory.mktemp("cohort")
    make_cohort(out, CohortConfig(n_patients=2, size=64, fmt="dicom"), progress=False)
    by_study: dict[str, list[Path]] = {}
    for f in sorted((out / "images").glob("*.dcm")):
        by_study.setdefault(str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID), []).append(f)
    assert len(by_study) == 2
    return by_study


class Recorder:
    """Stand-in processor: records each study's files; fails on request."""

    def __init__(self, fail_study: str | None = None) -> None:
        self.calls: list[dict[str, object]] = []
        self.fail_study = fail_study
        self.lock = threading.Lock()

    def __call__(self, folder: Path, previous=()) -> list:
        files = sorted(folder.glob("*.dcm"))
        uids = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
        sops = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        with self.lock:
            self.calls.append({"studies": uids, "sops": sops})
        if self.fail_study in uids:
            raise RuntimeError("boom")
        return []


def start_node(tmp_path: Path, processor, quiet: float = 1.5, deliver=lambda ds: [], **config) -> PacsNode:
    # quiet time longer than any pause between two C-STOREs on a loaded CI machine
    config = NodeConfig(port=0, quiet_s=quiet, work_dir=tmp_path / "work", salt="test-salt", **config)
    return PacsNode(config, processor, deliver=deliver).start()


def associate(node: PacsNode, *contexts, calling: str = "TESTSCU", established: bool = True):
    ae = AE(ae_title=calling)
    for c in contexts or (MRImageStorage,):
        ae.add_requested_context(c)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="LUMBARCLIP")
    assert assoc.is_established == established
    return assoc


def test_echo_and_interleaved_studies_kept_apart(tmp_path, studies):
    rec = Recorder()
    node = start_node(tmp_path, rec)
    try:
        a = associate(node, Verification, MRImageStorage)
        assert a.send_c_echo().Status == 0
        b = associate(node)
        (ua, fa), (ub, fb) = studies.items()
        for x, y in zip(fa, fb):  # alternate instances of the two studies over two associations
            assert a.send_c_store(pydicom.dcmread(x)).Status == 0
            assert b.send_c_store(pydicom.dcmread(y)).Status == 0
        a.release()
        b.release()
        assert node.wait_idle(30, n_records=2)
    finally:
        node.stop()
    assert sorted(len(c["sops"]) for c in rec.calls) == sorted([len(fa), len(fb)])
    for call in rec.calls:
        assert len(call["studies"]) == 1  # never mixed
        (uid,) = call["studies"]
        want = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in studies[uid]}
        assert call["sops"] == want
    assert all(r.ok for r in node.records)
    assert not list((tmp_path / "work" / "incoming").iterdir())  # cleaned after success


def test_non_mr_skipped_malformed_refused_node_keeps_running(tmp_path, studies):
    rec = Recorder()
    node = start_node(tmp_path, rec)
    (uid, files), _ = studies.items()
    try:
        assoc = associate(node, MRImageStorage, CTImageStorage)
        ct = pydicom.dcmread(files[0])
        ct.Modality, ct.SOPClassUID = "CT", CTImageStorage
        ct.SOPInstanceUID = pydicom.uid.generate_uid()
        ct.file_meta.MediaStorageSOPClassUID = CTImageStorage
        assert assoc.send_c_store(ct).Status == 0  # acknowledged, not stored: skipped
        broken = pydicom.dcmread(files[1])
        del broken.StudyInstanceUID
        assert assoc.send_c_store(broken).Status == STATUS_MALFORMED
        nopixels = pydicom.dcmread(files[1])
        del nopixels.PixelData
        assert assoc.send_c_store(nopixels).Status == STATUS_MALFORMED
        for f in files:  # the next, good study still goes through
            assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0
        assoc.release()
        assert node.wait_idle(30, n_records=1)
    finally:
        node.stop()
    assert node.skipped == {"not_mr": 1, "malformed": 2}
    assert len(rec.calls) == 1 and rec.calls[0]["studies"] == {uid}
    assert len(rec.calls[0]["sops"]) == len(files)


def test_crash_in_one_study_loses_no_other(tmp_path, studies, caplog):
    (bad, fbad), (good, fgood) = studies.items()
    rec = Recorder(fail_study=bad)
    node = start_node(tmp_path, rec)
    caplog.set_level(logging.DEBUG, logger="lumbarclip.pacs")
    try:
        assoc = associate(node)
        for f in fbad + fgood:
            assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0
        assoc.release()
        assert node.wait_idle(30, n_records=2)
        # the node still accepts and processes after the failure
        send(node, fgood)
        assert node.wait_idle(30, n_records=3)
    finally:
        node.stop()
    oks = sorted(r.ok for r in node.records)
    assert oks == [False, True, True]
    failed = list((tmp_path / "work" / "failed").iterdir())
    assert len(failed) == 1 and len(list(failed[0].glob("*.dcm"))) == len(fbad)
    # logs: hashed study tags only, no UIDs, patient names or IDs
    text = caplog.text
    assert "failed" in text and node.records[0].study in text
    for f in fbad + fgood:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for secret in (ds.StudyInstanceUID, ds.SOPInstanceUID, str(ds.PatientName), ds.SeriesInstanceUID):
            assert str(secret) not in text
        assert f" {ds.PatientID}" not in text and f"{ds.PatientID} " not in text


def test_unfinished_studies_of_a_killed_run_are_processed(tmp_path, studies):
    (uid, files), _ = studies.items()
    half = len(files) // 2
    for name, part in (("P1-aa", files[:half]), ("P1-bb", files[half:])):  # two batches of one study
        (tmp_path / "work" / "incoming" / name).mkdir(parents=True)
        for f in part:
            shutil.copy(f, tmp_path / "work" / "incoming" / name)
    rec = Recorder()
    node = start_node(tmp_path, rec)
    try:
        assert node.wait_idle(30, n_records=1)
    finally:
        node.stop()
    assert len(rec.calls) == 1 and rec.calls[0]["studies"] == {uid}
    assert len(rec.calls[0]["sops"]) == len(files)


def test_destination_parsing():
    assert Destination.parse("127.0.0.1:4242:ORTHANC") == Destination("127.0.0.1", 4242, "ORTHANC")
    for bad in ("127.0.0.1:4242", "host:port:AET", ":4242:X", "h:1:"):
        with pytest.raises(InputError):
            Destination.parse(bad)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")  # the test sends it on purpose
@pytest.mark.filterwarnings("ignore:The value length:UserWarning")  # the test sends it on purpose
def test_uid_that_is_a_path_is_refused_and_nothing_written_outside(tmp_path, studies):
    rec = Recorder()
    node = start_node(tmp_path, rec)
    (uid, files), _ = studies.items()
    import tempfile

    target = Path(tempfile.mkdtemp(prefix="lc")) / "evil.dcm"  # short: a UID has at most 64 chars
    try:
        assoc = associate(node)
        for bad in (str(target), "../../../outside/evil", "1.2.3.04", "1.2.x"):
            ds = pydicom.dcmread(files[0])
            ds.SOPInstanceUID = bad
            ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
            assert assoc.send_c_store(ds).Status == STATUS_MALFORMED, bad
        ds = pydicom.dcmread(files[0])
        ds.StudyInstanceUID = "../" + str(ds.StudyInstanceUID)
        assert assoc.send_c_store(ds).Status == STATUS_MALFORMED
        for f in files:  # a good study still goes through; a repeated instance replaces itself
            assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0
        assert assoc.send_c_store(pydicom.dcmread(files[0])).Status == 0
        assoc.release()
        assert node.wait_idle(30, n_records=1)
    finally:
        node.stop()
    assert not list(target.parent.iterdir())  # nothing written at the sender's path
    shutil.rmtree(target.parent)
    assert not list(tmp_path.glob("**/evil*")) and not list(tmp_path.glob("**/outside"))
    assert node.skipped["malformed"] == 5
    assert len(rec.calls) == 1 and len(rec.calls[0]["sops"]) == len(files)


def test_stored_files_are_named_by_hash_and_written_whole(tmp_path, studies):
    from lumbarclip.pacs.node import instance_file_name, write_atomic

    (uid, files), _ = studies.items()
    ds = pydicom.dcmread(files[0])
    name = instance_file_name(str(ds.SOPInstanceUID))
    assert name.endswith(".dcm") and str(ds.SOPInstanceUID) not in name and len(name) == 36
    write_atomic(ds, tmp_path / name)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind
    assert pydicom.dcmread(tmp_path / name).SOPInstanceUID == ds.SOPInstanceUID


def test_recovery_reads_every_file_and_keeps_a_study_with_one_bad_file(tmp_path, studies, caplog):
    (uid, files), _ = studies.items()
    folder = tmp_path / "work" / "incoming" / "P1-cc"
    folder.mkdir(parents=True)
    (folder / "0000bad.dcm").write_bytes(b"not dicom")  # sorts first: the old code gave up here
    for f in files:
        shutil.copy(f, folder)
    rec = Recorder()
    with caplog.at_level(logging.WARNING, logger="lumbarclip.pacs.node"):
        node = start_node(tmp_path, rec)
        try:
            assert node.wait_idle(30, n_records=1)
        finally:
            node.stop()
    assert len(rec.calls) == 1 and len(rec.calls[0]["sops"]) == len(files)
    assert any("unreadable" in r.getMessage() for r in caplog.records)


def test_worker_survives_a_failure_in_its_own_error_handler(tmp_path, studies, monkeypatch, caplog):
    import lumbarclip.pacs.node as node_module

    (ua, fa), (ub, fb) = studies.items()
    rec = Recorder(fail_study=ua)

    def no_move(*args, **kwargs):  # keeping the failed study's files fails too
        raise OSError("disk full")

    monkeypatch.setattr(node_module.shutil, "move", no_move)
    node = start_node(tmp_path, rec, quiet=0.5)
    with caplog.at_level(logging.ERROR, logger="lumbarclip.pacs.node"):
        try:
            assoc = associate(node)
            for f in fa:
                assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0
            assoc.release()
            deadline = time.monotonic() + 30
            while not any("could not record its failure" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the failing study was never handled"
                time.sleep(0.1)
            send(node, fb)  # the node still takes and analyses the next study
            assert node.wait_idle(30, n_records=2)
        finally:
            node.stop()
    assert [c["studies"] for c in rec.calls] == [{ua}, {ub}]  # the second study after the handler's failure


def _until_idle(node: PacsNode, timeout: float = 10.0) -> None:
    """Wait until the node's server holds no association (threads end a moment after a reply)."""
    deadline = time.monotonic() + timeout
    while node._server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not node._server.active_associations


def test_calling_ae_allow_list_and_association_bound(tmp_path, studies):
    node = start_node(tmp_path, Recorder(), allow_ae=("GOODSCU",), max_associations=1)
    try:
        stranger = associate(node, calling="TESTSCU", established=False)
        assert stranger.is_rejected
        _until_idle(node)  # the rejected association still counts against the bound until its thread ends
        first = associate(node, calling="GOODSCU")
        second = associate(node, calling="GOODSCU", established=False)  # over the bound
        assert second.is_rejected
        first.release()
        _until_idle(node)  # the server notices the release
        associate(node, calling="GOODSCU").release()
    finally:
        node.stop()
    with pytest.raises(InputError, match="1 association"):
        NodeConfig(max_associations=0)


class FlakyDelivery:
    """Refuses the first `failures` deliveries (the destination PACS is down), then accepts."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls, self.delivered = failures, 0, []

    def __call__(self, datasets) -> list[str]:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("destination down")
        self.delivered.append([str(ds.SOPInstanceUID) for ds in datasets])
        return self.delivered[-1]


def fake_report(folder: Path, previous=()) -> list:
    """Stand-in processor: one SR-like result per study, naming its predecessors."""
    ds = pydicom.Dataset()
    ds.Modality = "SR"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.StudyInstanceUID = str(pydicom.dcmread(sorted(folder.glob("*.dcm"))[0], stop_before_pixels=True).StudyInstanceUID)
    ds.NumberOfStudyRelatedInstances = len(list(folder.glob("*.dcm")))
    ds.ContentDescription = ",".join(str(p.SOPInstanceUID) for p in previous)[:64]
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return [ds]


def send(node: PacsNode, files) -> None:
    assoc = associate(node)
    for f in files:
        assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0
    assoc.release()


def test_undeliverable_results_are_kept_and_retried_with_backoff(tmp_path, studies):
    (uid, files), _ = studies.items()
    flaky = FlakyDelivery(failures=2)
    node = start_node(tmp_path, fake_report, quiet=0.3, deliver=flaky, retry_s=0.3, retry_max_s=0.6)
    try:
        send(node, files)
        deadline = time.monotonic() + 30
        while not (node.records and node.records[0].ok) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        node.stop()
    (record,) = node.records
    assert record.ok and record.attempts == 3 and flaky.calls == 3
    assert record.sent == flaky.delivered[0] and len(record.sent) == 1
    assert not list((tmp_path / "work" / "outbox").iterdir())  # removed once delivered
    assert NodeConfig(retry_s=30, retry_max_s=100).backoff(1) == 30
    assert [NodeConfig(retry_s=30, retry_max_s=100).backoff(k) for k in (2, 3, 4)] == [60, 100, 100]


def test_undelivered_results_survive_a_restart(tmp_path, studies):
    (uid, files), _ = studies.items()
    down = FlakyDelivery(failures=10**6)
    node = start_node(tmp_path, fake_report, quiet=0.3, deliver=down, retry_s=60)
    try:
        send(node, files)
        assert node.wait_idle(30, n_records=1)
    finally:
        node.stop()
    assert not node.records[0].ok and down.calls == 1
    (kept,) = (tmp_path / "work" / "outbox").iterdir()
    made = [str(pydicom.dcmread(f).SOPInstanceUID) for f in kept.glob("*.dcm")]
    up = FlakyDelivery(failures=0)  # the next run delivers what the last could not, unanalysed again
    processed = Recorder()
    node = start_node(tmp_path, processed, deliver=up)
    try:
        deadline = time.monotonic() + 30
        while not up.delivered and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        node.stop()
    assert up.delivered == [made] and processed.calls == []


def test_late_instance_gives_an_amended_report_of_the_merged_study(tmp_path, studies):
    (uid, files), _ = studies.items()
    got = FlakyDelivery(failures=0)
    calls = []

    def processor(folder, previous=()):
        calls.append((len(list(folder.glob("*.dcm"))), [str(p.SOPInstanceUID) for p in previous]))
        return fake_report(folder, previous)

    node = start_node(tmp_path, processor, quiet=0.3, deliver=got)
    try:
        send(node, files[:-1])
        assert node.wait_idle(30, n_records=1)
        send(node, files[-1:])  # arrives after the study was analysed and its SR sent
        assert node.wait_idle(30, n_records=2)
    finally:
        node.stop()
    (first,), (second,) = got.delivered
    assert calls == [(len(files) - 1, []), (len(files), [first])]  # merged study, predecessor named
    assert node.records[1].amends == [first] and node.records[1].n_instances == len(files)
    (kept,) = (tmp_path / "work" / "done").iterdir()
    assert len(list(kept.glob("*.dcm"))) == len(files) and len(list((kept / "sr").glob("*.dcm"))) == 2


def test_kept_studies_are_purged_after_keep_time(tmp_path, studies):
    (uid, files), _ = studies.items()
    node = start_node(tmp_path, fake_report, quiet=0.3, keep_s=100)
    try:
        send(node, files)
        assert node.wait_idle(30, n_records=1)
        assert uid in node.delivered
        assert node.delivered.purge(now=time.time() + 50) == 0
        assert node.delivered.purge(now=time.time() + 200) == 1
    finally:
        node.stop()
    assert uid not in node.delivered and not list((tmp_path / "work" / "done").iterdir())


_KILLABLE_NODE = """
import sys, time
from pathlib import Path
from lumbarclip.pacs.node import NodeConfig, PacsNode
node = PacsNode(NodeConfig(port=0, quiet_s=3600, work_dir=Path(sys.argv[1]), salt="s"), lambda f, p=(): [], lambda d: [])
node.start()
print(node.port, flush=True)
time.sleep(3600)
"""


def test_kill_during_receive_loses_no_acknowledged_instance(tmp_path, studies):
    """SIGKILL the node while an association is sending: every instance it acknowledged is
    analysed by the next run on the same work folder."""
    import os
    import signal
    import subprocess
    import sys

    (uid, files), _ = studies.items()
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE_NODE, str(tmp_path / "work")], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="LUMBARCLIP")
        assert assoc.is_established
        acknowledged = set()
        for f in files[: len(files) // 2 + 1]:
            ds = pydicom.dcmread(f)
            assert assoc.send_c_store(ds).Status == 0
            acknowledged.add(str(ds.SOPInstanceUID))
        os.kill(proc.pid, signal.SIGKILL)  # mid-association, nothing released
        proc.wait(10)
        assoc.abort()
    finally:
        proc.kill()
        proc.stdout.close()
    rec = Recorder()
    node = start_node(tmp_path, rec, quiet=0.2)
    try:
        assert node.wait_idle(30, n_records=1)
    finally:
        node.stop()
    assert len(rec.calls) == 1 and rec.calls[0]["sops"] == acknowledged
