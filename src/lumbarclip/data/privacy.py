"""Patient IDs kept out of what the package writes.

Pseudonyms (`pseudonymise`): a keyed hash, so a salt reproduces the same mapping. The salt is a secret the user keeps (an option or the `LUMBARCLIP_SALT` environment
variable); with it the user can recompute which pseudonym is which patient, without it
nobody can, even by hashing every 4-digit ID (that is why the hash is keyed, HMAC-SHA256,
and not a plain hash of the ID). No mapping file is ever written.

Training-patient digests (`train_patient_hashes`): plain sha256 of each train-split ID, which
`train` writes into train_summary.json so that `evaluate` can refuse to score a model on the
patients it was trained on without the run folder holding the IDs themselves.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from pathlib import Path

from lumbarclip.data.manifest import Manifest, read_manifest
from lumbarclip.errors import InputError

SALT_ENV = "LUMBARCLIP_SALT"
#: Hex digits kept: 48 bits, collision-free in practice for cohorts of thousands.
DIGEST_CHARS = 12
#: train_summary.json key: sorted sha256 hex digests of the training patient ids.
TRAIN_PATIENTS_KEY = "train_patients_sha256"


def resolve_salt(salt: str | None) -> str:
    """The salt from the option, else from `LUMBARCLIP_SALT`; refusing to run without one."""
    value = salt if salt is not None else os.environ.get(SALT_ENV, "")
    if not value:
        raise InputError(f"pseudonymising needs a salt: give --salt or set {SALT_ENV}")
    return value


def pseudonymise(patient_id: str, salt: str) -> str:
    """A stable pseudonym like 'P3f9a0c1b2d4e' for one patient ID under one salt."""
    digest = hmac.new(salt.encode("utf-8"), patient_id.encode("utf-8"), hashlib.sha256)
    return "P" + digest.hexdigest()[:DIGEST_CHARS]


def hash_patient_id(patient_id: str) -> str:
    """sha256 hex digest of a patient id: enough to recognise the patient again without
    writing the id itself into the run folder. Unkeyed, so not a pseudonym: short ids can be
    recovered by hashing every candidate (use `pseudonymise` for that)."""
    return hashlib.sha256(patient_id.encode("utf-8")).hexdigest()


def hash_patient_ids(patient_ids: Iterable[str]) -> list[str]:
    """Sorted unique `hash_patient_id` digests."""
    return sorted({hash_patient_id(pid) for pid in patient_ids})


def train_patient_hashes(manifest: Manifest | None, manifest_path: str | None) -> list[str] | None:
    """What `train` records under `TRAIN_PATIENTS_KEY`: the hashed train-split patients of the
    manifest it trained on, or of the manifest a shard folder was written from (None when that
    file is gone, and `evaluate` then warns that it cannot check)."""
    if manifest is None and manifest_path and Path(manifest_path).is_file():
        manifest = read_manifest(manifest_path, check_files=False)
    return hash_patient_ids(r.patient_id for r in manifest.split("train")) if manifest is not None else None
