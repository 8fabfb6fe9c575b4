"""A real Orthanc PACS for the tests, from the Debian packages `orthanc` + `orthanc-dicomweb`.

`OrthancServer` writes a temporary JSON configuration (own storage folder, free ports on
127.0.0.1 for HTTP and DICOM, the DICOMweb plugin, authentication off, our node registered as
modality `lumbarclip`), starts `Orthanc`, waits until `/system` answers, and removes everything
on `stop()`. Tests that need it use the `orthanc` fixture, which skips with the reason when the
Orthanc binary or the DICOMweb plugin is not installed (`apt-get install orthanc orthanc-dicomweb`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests
from _net import free_port

BINARY_CANDIDATES = ("/usr/sbin/Orthanc", "Orthanc")
PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)
ORTHANC_AET = "ORTHANC"
NODE_AET = "LUMBARCLIP"
NODE_MODALITY = "lumbarclip"




def find_orthanc() -> tuple[str | None, str | None]:
    """(binary, DICOMweb plugin) paths, None for what is missing."""
    binary = next((b for b in map(shutil.which, BINARY_CANDIDATES) if b), None)
    plugin = next((p for p in PLUGIN_CANDIDATES if Path(p).is_file()), None)
    return binary, plugin


class OrthancServer:
    """One throw-away Orthanc; `node_port` is where it expects our DICOM node."""

    def __init__(self, binary: str, plugin: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lumbarclip-orthanc-"))
        self.http_port, self.dicom_port, self.node_port = free_port(), free_port(), free_port()
        config = {
            "Name": "lumbarclip-test",
            "StorageDirectory": str(self.dir / "db"),
            "IndexDirectory": str(self.dir / "db"),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,  # HTTP from localhost only (Orthanc 1.10 has no bind address)
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": ORTHANC_AET,
            "DicomPort": self.dicom_port,
            "DicomModalities": {NODE_MODALITY: [NODE_AET, "127.0.0.1", self.node_port]},
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 1,
        }
        (self.dir / "orthanc.json").write_text(json.dumps(config, indent=1))
        self.log = open(self.dir / "orthanc.log", "wb")
        self.proc = subprocess.Popen(
            [binary, str(self.dir / "orthanc.json")], stdout=self.log, stderr=subprocess.STDOUT
        )
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self._wait_ready(timeout=30.0)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", timeout=1).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not answer /system within 30 s")

    def log_text(self) -> str:
        self.log.flush()
        return (self.dir / "orthanc.log").read_text(errors="replace")

    # --- REST helpers ----------------------------------------------------------------------

    def get(self, path: str) -> object:
        r = requests.get(f"{self.url}{path}", timeout=30)
        r.raise_for_status()
        return r.json()

    def upload(self, files: list[Path]) -> str:
        """POST each file to /instances; returns the Orthanc ID of their (single) study."""
        studies = set()
        for f in files:
            r = requests.post(f"{self.url}/instances", data=Path(f).read_bytes(), timeout=30)
            r.raise_for_status()
            studies.add(r.json()["ParentStudy"])
        assert len(studies) == 1, f"files span {len(studies)} studies"
        return studies.pop()

    def send_to_node(self, orthanc_id: str) -> dict:
        """C-STORE a study/series/instance (Orthanc ID) to our node, synchronously."""
        r = requests.post(
            f"{self.url}/modalities/{NODE_MODALITY}/store",
            json={"Resources": [orthanc_id], "Synchronous": True},
            timeout=120,
        )
        r.raise_for_status()
        return r.json()

    def series_of(self, orthanc_study: str, modality: str) -> list[dict]:
        """The study's series of one modality (e.g. 'SR'), with their MainDicomTags."""
        return [
            s
            for s in self.get(f"/studies/{orthanc_study}/series")
            if s["MainDicomTags"].get("Modality") == modality
        ]

    def instance_bytes(self, orthanc_instance: str) -> bytes:
        r = requests.get(f"{self.url}/instances/{orthanc_instance}/file", timeout=30)
        r.raise_for_status()
        return r.content

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def orthanc():
    """A running Orthanc for the module's tests; skipped (with the reason) when not installed."""
    binary, plugin = find_orthanc()
    if binary is None:
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    if plugin is None:
        pytest.skip("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
    server = OrthancServer(binary, plugin)
    try:
        yield server
    finally:
        server.stop()
