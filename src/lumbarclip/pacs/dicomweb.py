"""Pull mode: fetch one study from a DICOMweb server (QIDO-RS to find its MR series, WADO-RS
to retrieve them), analyse it, and store the results back (STOW-RS), with dicomweb-client."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from lumbarclip.data.privacy import pseudonymise
from lumbarclip.errors import InputError
from lumbarclip.pacs.node import ACCEPTED_MODALITIES, check_instance, instance_file_name
from lumbarclip.pacs.sr import read_report

log = logging.getLogger("lumbarclip.pacs")


def make_client(url: str, username: str | None = None, password: str | None = None) -> Any:
    """A DICOMweb client for `url` (e.g. http://127.0.0.1:8042/dicom-web), basic auth if given."""
    from dicomweb_client.api import DICOMwebClient

    if username:
        from requests.auth import HTTPBasicAuth
        from dicomweb_client.session_utils import create_session_from_auth

        return DICOMwebClient(url, session=create_session_from_auth(HTTPBasicAuth(username, password or "")))
    return DICOMwebClient(url)


def pull_study(
    client: Any,
    study_uid: str,
    analyse: Callable[[Path], Sequence[Dataset]],
    salt: str,
    stow: bool = True,
) -> dict[str, Any]:
    """Analyse one study from the server; returns a summary (study hashed, verdict, probability,
    threshold, SR UID, whether it was stored). InputError when the study has no MR series."""
    tag = pseudonymise(study_uid, salt)
    series = [Dataset.from_json(s) for s in client.search_for_series(study_instance_uid=study_uid)]
    mr = [s for s in series if str(s.get("Modality", "")).upper() in ACCEPTED_MODALITIES]
    if not mr:
        raise InputError(f"study {tag}: no MR series on the server ({len(series)} series found)")
    with tempfile.TemporaryDirectory(prefix="lumbarclip-pull-") as tmp:
        files, skipped = [], 0
        for s in mr:
            for ds in client.retrieve_series(study_uid, str(s.SeriesInstanceUID)):
                if check_instance(ds) != "ok":
                    skipped += 1
                    continue
                path = Path(tmp) / instance_file_name(str(ds.SOPInstanceUID))
                ds.save_as(path, enforce_file_format=True)
                files.append(path)
        log.info("study %s: %d instances retrieved, %d skipped", tag, len(files), skipped)
        results = list(analyse(Path(tmp)))
    if stow:
        client.store_instances(results)
        log.info("study %s: %d result instances stored", tag, len(results))
    report = read_report(results[0])
    return {
        "study": tag,
        "n_instances": len(files),
        "skipped": skipped,
        "verdict": report["verdict"],
        "p_abnormal": report.get("p_abnormal"),  # absent when the study was not assessed
        "threshold": report.get("threshold"),
        "reason": report.get("reason"),
        "sr": str(results[0].SOPInstanceUID),
        "n_results": len(results),
        "stored": stow,
    }
