"""Resolving the Lab's paths: every path a Lab's metadata names stays inside the Lab (no `..`, no
leading `/`, no symlink leading out), with a fast path for the plain trees Nix builds."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path, PurePosixPath
from stat import S_ISDIR, S_ISREG

from ..errors import LabError

MANIFEST_SUFFIX = "lab-metadata.json"


def find_manifest(root: Path) -> Path:
    """The Lab's manifest, `lab/*lab-metadata.json` (the first by name when there are several)."""
    lab_dir = root / "lab"
    candidates = sorted(lab_dir.glob(f"*{MANIFEST_SUFFIX}")) if lab_dir.is_dir() else []
    if not candidates:
        raise LabError(f"{root} is not a Lab: no lab/*{MANIFEST_SUFFIX} manifest (is this the output of `nix build`?)")
    return candidates[0]


class PlainTree:
    """The fast path of `lab_file` and `is_dir` for what Nix builds: paths of plain names (no "",
    ".", ".." or dot-files) through real directories, no symlinks. One lstat per path component
    not seen before, instead of `realpath`'s lstat of every component from `/`. Whatever it
    cannot vouch for (symlinks, missing files, unusual names) gets a falsy answer, and the caller
    takes the exact slow path, with its error messages."""

    def __init__(self, root: Path) -> None:
        self.prefix = os.path.join(root, "")  # root is resolved: no symlinks up to here
        self.dirs: set[str] = set()  # relative paths known to be directories reached without symlinks

    def _dir(self, rel: str) -> bool:
        if rel in self.dirs:
            return True
        parent = rel.rpartition("/")[0]
        if parent and not self._dir(parent):
            return False
        try:
            if not S_ISDIR(os.lstat(self.prefix + rel).st_mode):
                return False
        except (OSError, ValueError):
            return False
        self.dirs.add(rel)
        return True

    def scan(self, rel: str) -> None:
        """Learn the subdirectories of directory `rel` from one listing (no lstat per entry)."""
        if not (_plain(rel) and self._dir(rel)):
            return
        with contextlib.suppress(OSError), os.scandir(self.prefix + rel) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    self.dirs.add(f"{rel}/{entry.name}")

    def is_dir(self, rel: str) -> bool:
        return _plain(rel) and self._dir(rel)

    def file(self, rel: str) -> str | None:
        """The path of regular file `rel` when it is reached without symlinks, else None."""
        if not _plain(rel):
            return None
        parent = rel.rpartition("/")[0]
        if parent and not self._dir(parent):
            return None
        path = self.prefix + rel
        try:
            return path if S_ISREG(os.lstat(path).st_mode) else None
        except (OSError, ValueError):
            return None


def _plain(rel: str) -> bool:
    return bool(rel) and rel[0] not in "/." and rel[-1] != "/" and "//" not in rel and "/." not in rel and "\x00" not in rel


def check_relative(rel: str, what: str) -> None:
    """Refuse `rel` (named `what` in the message) unless it is a relative path staying inside the Lab."""
    if rel and rel[0] != "/" and ".." not in rel and "\x00" not in rel:
        return  # the common case, decided without building a PurePosixPath
    if "\x00" in rel:
        raise LabError(f"{what} path {rel!r} contains a NUL byte; fix the path in the Lab's metadata")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or rel == "":
        raise LabError(f"{what} path {rel!r} must be relative and stay inside the Lab (no '..', no leading '/')")


def lab_file(root: Path, rel: str, what: str) -> Path:
    """The path of Lab file `rel`, refused when it is missing or a symlink leads it outside the Lab."""
    check_relative(rel, what)
    path = root / rel
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise LabError(f"{what}: {rel} is a symlink leading outside the Lab ({real}); Labs must be self-contained")
    if not probe(real.is_file):
        raise LabError(f"{what}: {rel} is missing from the Lab")
    return path


def probe(test) -> bool:
    """A pathlib test (`exists`, `is_file`, `is_dir`); a name the OS rejects (too long...) is absent."""
    try:
        return test()
    except OSError:
        return False


def relative_name(path: Path, root: Path) -> str:
    """`path` as messages show it: relative to the Lab's root when it is inside."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)

