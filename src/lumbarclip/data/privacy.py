"""Patient-ID pseudonymisation: a keyed hash, so a salt reproduces the same mapping.

The salt is a secret the user keeps (an option or the `LUMBARCLIP_SALT` environment
variable); with it the user can recompute which pseudonym is which patient, without it
nobody can, even by hashing every 4-digit ID (that is why the hash is keyed, HMAC-SHA256,
and not a plain hash of the ID). No mapping file is ever written.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from lumbarclip.errors import InputError

SALT_ENV = "LUMBARCLIP_SALT"
#: Hex digits kept: 48 bits, collision-free in practice for cohorts of thousands.
DIGEST_CHARS = 12


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
