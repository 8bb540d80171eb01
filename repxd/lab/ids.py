"""Content-addressed job ids, computed as upstream RepX does (lab-format §11)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

NIX_BASE32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
SEPARATOR = "x00"  # upstream joins the identity parts with this literal three-character string
JOB_ID_LENGTH = 32
MAPPING_KEYS = (
    "type", "job_id_template", "source_output", "target_input", "source_run",
    "dependency_type", "source_value", "source", "source_key", "job_id",
)


def nix_base32(digest: bytes) -> str:
    """Nix's base-32: least significant bits first, over the whole digest."""
    length = (len(digest) * 8 - 1) // 5 + 1
    chars = []
    for n in range(length - 1, -1, -1):
        bit = n * 5
        i, j = divmod(bit, 8)
        c = digest[i] >> j
        if i + 1 < len(digest):
            c |= digest[i + 1] << (8 - j)
        chars.append(NIX_BASE32_ALPHABET[c & 0x1F])
    return "".join(chars)


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def ordered_mapping(mapping: dict[str, Any]) -> dict[str, Any]:
    return {key: mapping.get(key) for key in MAPPING_KEYS}


def job_hash(identities: list[str], params: dict[str, Any], deps: list[str], mappings: list[dict[str, Any]]) -> str:
    """The 32-character id prefix of a job (`<hash>` in `<hash>-<pname>-<version>`)."""
    parts = [
        *identities,
        compact_json(params),
        json.dumps(deps, separators=(",", ":"), ensure_ascii=False),
        hashlib.sha256(":".join(deps).encode()).hexdigest(),
        json.dumps([ordered_mapping(m) for m in mappings], separators=(",", ":"), ensure_ascii=False),
    ]
    digest = hashlib.sha256(SEPARATOR.join(parts).encode()).digest()
    return nix_base32(digest)[:JOB_ID_LENGTH]
