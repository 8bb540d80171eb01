"""The Lab's metadata as held in memory: compact structs decoded straight from the JSON files.

A 100,000-job Lab lists 300,000 files and 100,000 job specs. As pydantic models they held
~830 MB (a model instance, its `__dict__` and its fields-set per job, executable and mapping);
here a job spec is a few slotted structs outside the cyclic GC, and the manifest is packed.
pydantic stays the boundary for errors: whatever these decoders refuse is parsed again by the
models of `schema.py`, whose message is the one the user sees (and whatever pydantic accepts
that these do not, its leniencies, is converted from its result)."""

from __future__ import annotations

import array
import bisect
import itertools
import mmap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import msgspec

from .schema import ResourceHints, RunMetadata

# gc=False: these never form cycles, and untracked objects keep the collector from rescanning
# millions of them; frozen, as the pydantic models were.


class InputMapping(msgspec.Struct, frozen=True, gc=False):
    target_input: str
    job_id: str | None = None
    source_output: str | None = None
    type: Literal["intra-pipeline", "inter-run", "global"] | None = None
    dependency_type: Literal["hard", "soft"] | None = None
    source_run: str | None = None
    source: str | None = None
    source_key: str | None = None


class Executable(msgspec.Struct, frozen=True, gc=False):
    path: str
    inputs: tuple[InputMapping, ...] = ()
    outputs: dict[str, Any] = {}
    # Decoded as the JSON object, then swapped for a validated ResourceHints by `decode_run`.
    resource_hints: Any = None
    deps: tuple[str, ...] = ()


class JobSpec(msgspec.Struct, frozen=True, gc=False):
    executables: dict[str, Executable]
    name: str | None = None
    stage_type: Literal["simple", "scatter-gather", "worker", "gather"] = "simple"
    params: Any = {}
    resource_hints: Any = None  # as in Executable


class RunSpec(msgspec.Struct, frozen=True):
    """A run's metadata file (`revision/metadata-<run>.json`)."""

    name: str
    type: Literal["run"] = "run"
    gitHash: str | None = None
    dependencies: dict[str, str] = {}
    image: str | None = None
    jobs: dict[str, JobSpec] = {}


class _RunWire(msgspec.Struct):
    """A run's file with its jobs left encoded: each is decoded and compacted in turn, so the
    duplicates decoding makes (every mapping's copy of a job id...) never pile up."""

    name: str
    type: Literal["run"] = "run"
    gitHash: str | None = None
    dependencies: dict[str, str] = {}
    image: str | None = None
    jobs: dict[str, msgspec.Raw] = {}


_RUN_DECODER = msgspec.json.Decoder(_RunWire)
_JOB_DECODER = msgspec.json.Decoder(JobSpec)
# What decoding refuses with: wrong shape, broken JSON, bytes that are not UTF-8, deep nesting.
_DECODE_ERRORS = (msgspec.MsgspecError, UnicodeDecodeError, RecursionError)
RELEASE_EVERY = 8 << 20  # bytes of a run's file decoded between calls of `release`


class Refused(Exception):
    """The fast decoders cannot vouch for this file; pydantic must read it."""


def decode_run(data: bytes | mmap.mmap, release: Callable[[int], None] | None = None) -> RunSpec:
    """The run metadata in `data`; raises Refused for anything the fast path cannot vouch for.
    `release(n)` is told, now and then, that the first `n` bytes of `data` are no longer read."""
    try:
        return _decode_run(data, release)
    except _DECODE_ERRORS:
        pass  # not `raise ... from`: the error's frames refer to `data`, which the caller may unmap
    raise Refused


def _decode_run(data: bytes | mmap.mmap, release: Callable[[int], None] | None) -> RunSpec:
    wire = _RUN_DECODER.decode(data)
    compact = _Compactor()
    jobs: dict[str, JobSpec] = {}
    decoded = released = 0
    for job_id, raw in wire.jobs.items():
        jobs[compact.text(job_id)] = compact.job(_JOB_DECODER.decode(raw))
        decoded += len(raw)  # short of the job's end by the keys and spaces between: a lower bound
        if release is not None and decoded - released >= RELEASE_EVERY:
            release(released := decoded)
    return RunSpec(wire.name, wire.type, wire.gitHash, wire.dependencies, wire.image, jobs)


def from_model(meta: RunMetadata) -> RunSpec:
    """The same run from what pydantic accepted (its leniencies: NaN and the like)."""
    run = msgspec.convert(meta.model_dump(), RunSpec)
    compact = _Compactor()
    for spec in run.jobs.values():
        compact.job(spec)
    return run


class _Compactor:
    """Makes the specs of a run share what repeats: one object per distinct string (stage names,
    input and output names, job ids), per distinct outputs map and per distinct resource hints,
    each hints object validated as a ResourceHints (raises Refused for an invalid one)."""

    def __init__(self) -> None:
        self.strings: dict[str, str] = {}
        self.outputs: dict[tuple, dict[str, Any]] = {}
        self.hints: dict[bytes, ResourceHints] = {}

    def text(self, value: str) -> str:
        return self.strings.setdefault(value, value)

    def job(self, spec: JobSpec) -> JobSpec:
        text, put = self.strings.setdefault, msgspec.structs.force_setattr
        if spec.name is not None:
            put(spec, "name", text(spec.name, spec.name))
        if spec.resource_hints is not None:
            put(spec, "resource_hints", self._hints(spec.resource_hints))
        for exe in spec.executables.values():
            for mapping in exe.inputs:
                put(mapping, "target_input", text(mapping.target_input, mapping.target_input))
                if mapping.job_id is not None:
                    put(mapping, "job_id", text(mapping.job_id, mapping.job_id))
                if mapping.source_output is not None:
                    put(mapping, "source_output", text(mapping.source_output, mapping.source_output))
            if exe.outputs:
                try:
                    key = tuple(exe.outputs.items())
                    put(exe, "outputs", self.outputs.setdefault(key, exe.outputs))
                except TypeError:  # an object among the values (a scatter's `worker__arg`): its own
                    pass
            if exe.resource_hints is not None:
                put(exe, "resource_hints", self._hints(exe.resource_hints))
        return spec

    def _hints(self, hints: Any) -> ResourceHints:
        encoded = msgspec.json.encode(hints)
        found = self.hints.get(encoded)
        if found is None:
            try:
                found = self.hints[encoded] = ResourceHints.model_validate_json(encoded)
            except ValueError:  # pydantic's ValidationError
                raise Refused from None
        return found


# ---- the manifest ----------------------------------------------------------------------------


class _FileWire(msgspec.Struct, gc=False):
    path: str
    sha256: str  # 64 lowercase hex digits: checked for all files at once by `Manifest.decode`


class _ManifestWire(msgspec.Struct):
    labId: str
    metadata: str
    files: list[_FileWire] = []
    lab_version: str = "1.0.0"


_MANIFEST_DECODER = msgspec.json.Decoder(_ManifestWire)


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    sha256: str


class Manifest:
    """`lab/lab-metadata.json`: the Lab's id and every file's path and SHA-256. The files are
    packed: the paths as one string and their offsets, the digests as 32 bytes each, because one
    object per path and digest would pin ~100 MB for a 100,000-job Lab."""

    __slots__ = ("labId", "lab_version", "metadata", "_paths", "_starts", "_digests", "_order")

    def __init__(self, labId: str, metadata: str, lab_version: str = "1.0.0",
                 paths: Sequence[str] = (), digests: Sequence[str] = ()) -> None:
        self.labId = labId
        self.metadata = metadata
        self.lab_version = lab_version
        if len(paths) != len(digests):
            raise ValueError(f"{len(paths)} paths but {len(digests)} digests")
        self._paths = "".join(paths)
        self._starts = array.array("Q", itertools.accumulate(map(len, paths), initial=0))
        self._digests = bytes.fromhex("".join(digests))
        self._order: Sequence[int] | None = None  # indices in path order, made when first needed

    @property
    def files(self) -> _Files:
        return _Files(self)

    def paths(self) -> Iterator[str]:
        """The listed paths in the manifest's order (without making an entry per file)."""
        starts, text = self._starts, self._paths
        return (text[starts[i]:starts[i + 1]] for i in range(len(starts) - 1))

    def path_at(self, index: int) -> str:
        return self._paths[self._starts[index]:self._starts[index + 1]]

    def digest_at(self, index: int) -> str:
        return self._digests[32 * index:32 * index + 32].hex()

    def digest_of(self, path: str) -> str | None:
        """The SHA-256 the manifest lists for `path`, or None when it does not list it."""
        order = self._order
        if order is None:
            self._order = order = self._path_order()
        i = bisect.bisect_left(order, path, key=self.path_at)
        if i < len(order) and self.path_at(order[i]) == path:
            return self.digest_at(order[i])
        return None

    def _path_order(self) -> Sequence[int]:
        n = len(self._starts) - 1
        if all(self.path_at(i) < self.path_at(i + 1) for i in range(n - 1)):
            return range(n)  # as Labs are written: nothing to keep
        return array.array("Q", sorted(range(n), key=self.path_at))

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """The manifest in `data`; raises Refused for anything the fast path cannot vouch for."""
        try:
            wire = _MANIFEST_DECODER.decode(data)
        except _DECODE_ERRORS:
            raise Refused from None
        digests = [f.sha256 for f in wire.files]
        # What a pattern per digest checked (a third of decoding a 300,000-file manifest), at once:
        # 64 characters each, and hex that `bytes.hex()` writes back unchanged (lowercase, no spaces).
        if not set(map(len, digests)) <= {64}:
            raise Refused
        try:
            manifest = cls(wire.labId, wire.metadata, wire.lab_version, [f.path for f in wire.files], digests)
        except ValueError:  # not hex
            raise Refused from None
        if manifest._digests.hex() != "".join(digests):
            raise Refused
        return manifest


class _Files(Sequence[FileEntry]):
    """The manifest's files in its order, each made when asked for."""

    __slots__ = ("_manifest",)

    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest

    def __len__(self) -> int:
        return len(self._manifest._starts) - 1

    @overload
    def __getitem__(self, index: int) -> FileEntry: ...
    @overload
    def __getitem__(self, index: slice) -> list[FileEntry]: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return FileEntry(self._manifest.path_at(index), self._manifest.digest_at(index))

    def __iter__(self) -> Iterator[FileEntry]:
        manifest = self._manifest
        for i in range(len(self)):
            yield FileEntry(manifest.path_at(i), manifest.digest_at(i))
