"""Reading the Lab's JSON files: msgspec decodes them (specs.py); whatever it refuses is parsed
again by the pydantic models of schema.py, whose message names the file, the place and the fix."""

from __future__ import annotations

import mmap
from pathlib import Path

from pydantic import BaseModel, ValidationError

from ..errors import LabError
from . import schema, specs
from .lab_paths import relative_name
from .schema import RunMetadata
from .specs import Manifest, RunSpec


def parse_manifest(path: Path, root: Path) -> Manifest:
    """The manifest at `path`, packed (specs.Manifest)."""
    data = _read(path, root)
    try:
        return Manifest.decode(data)
    except specs.Refused:
        pydantic = parse_model(schema.Manifest, path, root, data)
        return Manifest(pydantic.labId, pydantic.metadata, pydantic.lab_version,
                        [f.path for f in pydantic.files], [f.sha256 for f in pydantic.files])


def parse_run(path: Path, root: Path) -> RunSpec:
    """A run's metadata file, its job specs compacted (specs.RunSpec)."""
    # Mapped rather than read: the pages already decoded are dropped as decoding goes on, so a
    # 100 MB file and the jobs made from it are not both resident at the end.
    try:
        with open(path, "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # empty, not a regular file, unreadable: read below, as ever
        mapped = None
    try:
        if mapped is not None:
            return specs.decode_run(mapped, lambda n: mapped.madvise(mmap.MADV_DONTNEED, 0, n))
        return specs.decode_run(_read(path, root))
    except specs.Refused:
        return specs.from_model(parse_model(RunMetadata, path, root))
    finally:
        if mapped is not None:
            mapped.close()


def _read(path: Path, root: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LabError(f"{relative_name(path, root)}: cannot read: {exc.strerror}") from None


def parse_model(model: type[BaseModel], path: Path, root: Path, data: bytes | None = None):
    """The file at `path` (or its bytes `data`) validated as `model`; any problem is one LabError
    naming the file, the place in it and pydantic's message."""
    try:
        return model.model_validate_json(path.read_bytes() if data is None else data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise LabError(f"{relative_name(path, root)}: {where}: {err['msg']}{more}") from None
    except OSError as exc:
        raise LabError(f"{relative_name(path, root)}: cannot read: {exc.strerror}") from None
