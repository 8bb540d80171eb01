"""Synchronisation phase 3 with an SSH target, and jobs with an image run there under bubblewrap.

Image layers go content-addressed, in upstream's remote layout: `artifacts/store/<sha256>-layer.tar`
holds each layer once, and `artifacts/images/<image>/` holds the image's small files with each
layer path a symlink into the store. Locally, the same shape is made of hard links under the
mirror's `cache/ssh-images/` and sent with one rsync, which skips every layer the remote has
already (from this Lab or any other). The image's root filesystem is extracted on the remote,
once, by the job's first process (`remote.sh image`), under `<node_local_path>/repx/cache/images`
when the target has a node_local_path (reused by every run and base path there), else under the
remote base's `cache/images`."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConfigError
from ...exec.layout import OutputLayout
from ...exec.runtimes import (
    BwrapRuntime,
    Invocation,
    Runtime,
    image_dir,
    make_runtime,
    read_image_manifest,
)
from ...lab.model import Lab

IMAGES_TREE = "ssh-images"


def helper_path(base: Path | str, name: str, content: bytes) -> str:
    """Where a helper of this content lives under a base path's `bin/` (see RemoteBase.deploy_helper)."""
    return f"{base}/bin/{hashlib.sha256(content).hexdigest()[:16]}-{name}"


@dataclass
class RemoteBwrapRuntime(BwrapRuntime):
    """bwrap on the SSH target's host: nothing is extracted here; the job's command line first has
    the remote helper make sure the image's root filesystem is there."""

    helper: str = ""  # the deployed remote.sh, as a path under the local base (the mirror maps it)
    layers: tuple[str, ...] = ()

    def prepare(self) -> None:
        self.layers = tuple(read_image_manifest(self.image)["Layers"])

    def invocation(self, script: Path, out: Path, repx: Path, args: list[str]) -> Invocation:
        inner = super().invocation(script, out, repx, args)
        argv = ["sh", self.helper, "image", str(self.rootfs), str(self.image), str(self.layout.base),
                *self.layers, "--", *inner.argv]
        return Invocation(argv, inner.env, inner.cwd)


def remote_runtime(target_name: str, kind: str, lab: Lab, layout: OutputLayout, image: str | None,
                   target, helper: str) -> Runtime:
    """The runtime of a job on an SSH target: native, or bwrap on the host for a job with an image."""
    if kind == "native" or image is None:
        return make_runtime("native", lab, layout, None, target)
    if kind != "bwrap":
        raise ConfigError(f"target {target_name!r} (ssh) runs jobs natively or with bwrap, not with {kind};"
                          " choose --runtime bwrap or native, or a local target for this runtime")
    if target.mount_host_paths or target.mount_paths:
        raise ConfigError(f"target {target_name!r} (ssh): mount_paths and mount_host_paths are not supported on an"
                          " SSH target yet; remove them from the target")
    local = image_dir(lab, image)  # the remote has it where the artifacts are
    return RemoteBwrapRuntime(layout, make_runtime("native", lab, layout, None, target).host_tool_dirs,
                              image=layout.artifacts / local.relative_to(lab.root), cache_root=target.node_local_path,
                              helper=helper)


def images_tree(lab: Lab, layout: OutputLayout, job_ids: list[str]) -> Path | None:
    """The content-addressed tree of the images these jobs use (hard links, no copies), or None."""
    names = sorted({image for job in job_ids if (image := lab.image_of(job)) is not None})
    if not names:
        return None
    tree = layout.cache / IMAGES_TREE
    shutil.rmtree(tree, ignore_errors=True)
    for name in names:
        source = image_dir(lab, name)
        dest = tree / source.relative_to(lab.root)
        layers = set(read_image_manifest(source)["Layers"])
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            rel = path.relative_to(source).as_posix()
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if rel not in layers:
                _link(path, target)
                continue
            digest = lab.manifest.digest_of(path.relative_to(lab.root).as_posix()) or _sha256(path)
            stored = tree / "store" / f"{digest}-layer.tar"
            if not stored.exists():
                stored.parent.mkdir(parents=True, exist_ok=True)
                _link(path, stored)
            target.symlink_to(os.path.relpath(stored, target.parent))
    return tree


def _link(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest, follow_symlinks=True)
    except OSError:
        shutil.copy2(source, dest)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
