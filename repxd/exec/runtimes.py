"""Runtimes (lab-format §10): how a job script is started — natively, in bubblewrap, or in a
podman/docker container built from the run's image. Each returns the command line to launch;
the launcher (subprocess or systemd unit) starts it. A runtime given an attempt's DeviceGrant
(`with_devices`) exposes exactly those GPUs: visibility variables natively, `--dev-bind` of their
nodes and the driver's files in bubblewrap, CDI names or device nodes in containers."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ConfigError, LabError, RepxError
from ..hardware.devices import NO_DEVICES, DeviceGrant
from ..lab import tarsafe
from ..lab.model import Lab
from ..user_config import TargetConfig
from .layout import OutputLayout

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
NIXOS_DRIVER = "/run/opengl-driver"  # NixOS: the GPU driver's user space, where its programs look
DRIVER_DIR = "/run/repx-driver"  # elsewhere: the driver's libraries, bound file by file
CDI_KINDS = {"nvidia": "nvidia.com/gpu", "amd": "amd.com/gpu", "intel": "intel.com/gpu"}
# mount_host_paths in bubblewrap, as upstream (repx-executor runtime/bwrap.rs): every top-level host
# directory but these is bound, writable only for the second list; podman gets the container list.
HOST_DIRS_NOT_BOUND = ("dev", "proc", "sys", "nix")
HOST_DIRS_WRITABLE = ("home", "tmp", "var", "opt", "srv", "mnt", "media", "run")
CONTAINER_HOST_DIRS = ("/home", "/tmp", "/var", "/opt", "/run", "/media", "/mnt", "/nix")


@dataclass(frozen=True)
class MountPolicy:
    """A target's `mount_host_paths` / `mount_paths` (upstream's MountPolicy): the host seen by jobs
    in bwrap and containers. `all_host` wins over `paths`, as upstream's from_flags."""

    all_host: bool = False
    paths: tuple[str, ...] = ()

    @classmethod
    def of(cls, target: TargetConfig | None) -> MountPolicy:
        if target is None:
            return cls()
        return cls(target.mount_host_paths, () if target.mount_host_paths else tuple(target.mount_paths))


class RuntimePreparationError(RepxError):
    """A runtime could not be prepared (the engine failed to load the image): one line, exit 1."""

    exit_code = 1


@dataclass
class Invocation:
    argv: list[str]
    env: dict[str, str]
    cwd: Path


@dataclass
class Runtime:
    """Base: native execution. Subclasses wrap the script's command line."""

    name = "native"
    layout: OutputLayout
    host_tool_dirs: list[str] = field(default_factory=list)
    devices: DeviceGrant = field(default=NO_DEVICES, kw_only=True)
    mounts: MountPolicy = field(default=MountPolicy(), kw_only=True)
    # A target's node_local_path: where image caches live instead of the base path (upstream's
    # repx-executor context.rs puts them in <node_local_path>/repx/cache).
    cache_root: Path | None = field(default=None, kw_only=True)
    # The jobs' environment (this process's, with the host tools first on PATH), taken at the first job.
    _environment: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    def prepare(self) -> None:
        """One-time work before the first job (image extraction, image load)."""

    def _check_mount_paths(self) -> None:
        for host_path in self.mounts.paths:
            if not os.path.isabs(host_path) or not os.path.exists(host_path):
                raise ConfigError(f"mount_paths entry {host_path!r} is not an existing absolute path on this host;"
                                  " create it or remove it from the target")

    def with_devices(self, grant: DeviceGrant) -> Runtime:
        """This (prepared) runtime for one attempt that was assigned `grant`."""
        return replace(self, devices=grant)

    def invocation(self, script: Path, out: Path, repx: Path, args: list[str]) -> Invocation:
        if self._environment is None:
            # Taken once per runtime: copying os.environ decodes every entry (~0.15 ms a job).
            self._environment = dict(os.environ)
            self._environment["PATH"] = os.pathsep.join([*self.host_tool_dirs, os.environ.get("PATH", SANDBOX_PATH)])
        env = dict(self._environment)
        env.update(self.devices.visible_env())
        return Invocation([str(script), *args], env, out)


def _driver_libraries(grant: DeviceGrant) -> list[str]:
    return [path for path in grant.driver_paths if path != NIXOS_DRIVER]


def bwrap_device_args(grant: DeviceGrant) -> tuple[list[str], list[str]]:
    """(mount arguments, environment arguments) exposing `grant` in bubblewrap. Only the assigned
    GPUs' nodes are bound, so CUDA and ROCr enumerate only them; CUDA is also told their UUIDs."""
    if not grant.gpus:
        return [], []
    mounts: list[str] = []
    for node in dict.fromkeys(grant.nodes):
        mounts += ["--dev-bind", node, node]
    if grant.of("amd"):
        mounts += ["--ro-bind", "/sys", "/sys"]  # ROCr reads the KFD topology from sysfs
    if NIXOS_DRIVER in grant.driver_paths:
        mounts += ["--ro-bind", NIXOS_DRIVER, NIXOS_DRIVER]
    env: list[str] = []
    libraries = _driver_libraries(grant)
    if libraries:
        mounts += ["--tmpfs", DRIVER_DIR]
        for library in libraries:
            mounts += ["--ro-bind", library, f"{DRIVER_DIR}/lib/{Path(library).name}"]
        env += ["--setenv", "LD_LIBRARY_PATH", f"{DRIVER_DIR}/lib"]
    uuids = [gpu.uuid for gpu in grant.of("nvidia") if gpu.uuid]
    if uuids:
        env += ["--setenv", "CUDA_VISIBLE_DEVICES", ",".join(uuids)]
    return mounts, env


def container_device_args(grant: DeviceGrant) -> list[str]:
    """podman/docker arguments exposing `grant`: CDI names (`nvidia.com/gpu=0`) when the host has
    a CDI spec for the vendor, else the device nodes and the driver's files."""
    args: list[str] = []
    nodes = False
    for vendor in sorted({gpu.vendor for gpu in grant.gpus}):
        kind = CDI_KINDS[vendor]
        if kind in grant.cdi:
            args += [a for gpu in grant.of(vendor) for a in ("--device", f"{kind}={gpu.index}")]
        else:
            args += [a for gpu in grant.of(vendor) for node in gpu.devices for a in ("--device", node)]
            nodes = True
    if nodes:
        args += [a for node in grant.shared for a in ("--device", node)]
        if NIXOS_DRIVER in grant.driver_paths:
            args += ["--volume", f"{NIXOS_DRIVER}:{NIXOS_DRIVER}:ro"]
        libraries = _driver_libraries(grant)
        args += [a for lib in libraries for a in ("--volume", f"{lib}:{DRIVER_DIR}/lib/{Path(lib).name}:ro")]
        if libraries:
            args += ["--env", f"LD_LIBRARY_PATH={DRIVER_DIR}/lib"]
    return args


def _host_tool_dirs(lab: Lab, layout: OutputLayout) -> list[str]:
    tools = layout.artifacts / "host-tools"
    src = lab.root / "host-tools"
    if not src.is_dir():
        return []
    return [str(tools / entry.name / "bin") for entry in sorted(src.iterdir()) if (entry / "bin").is_dir()]


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def image_dir(lab: Lab, image: str) -> Path:
    """The unpacked docker-archive of `image`; a legacy `image/` subdirectory is accepted."""
    path = lab.root / image
    if not (path / "manifest.json").is_file() and (path / "image" / "manifest.json").is_file():
        path = path / "image"
    return path


def read_image_manifest(path: Path) -> dict:
    try:
        entry = json.loads((path / "manifest.json").read_text())[0]
        if not isinstance(entry["Layers"], list):
            raise TypeError("Layers is not a list")
        return entry
    except (OSError, ValueError, LookupError, TypeError) as exc:
        raise LabError(f"image {path}: manifest.json is not a docker-archive manifest ({exc})") from None


@dataclass
class BwrapRuntime(Runtime):
    name = "bwrap"
    image: Path = Path()

    @property
    def rootfs(self) -> Path:
        cache = self.cache_root / "repx" / "cache" if self.cache_root else self.layout.cache
        return cache / "images" / self.image.name / "rootfs"

    def prepare(self) -> None:
        if shutil.which("bwrap") is None:
            raise ConfigError("execution type bwrap needs the `bwrap` program (install bubblewrap), or choose --runtime native")
        self._check_mount_paths()
        rootfs = self.rootfs
        with _locked(rootfs.parent / "lock"):
            if not (rootfs.parent / "complete").exists():
                partial = rootfs.parent / "rootfs.partial"
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
                for layer in read_image_manifest(self.image)["Layers"]:
                    try:
                        _apply_layer(self.image / layer, partial)
                    except (tarfile.TarError, OSError) as exc:
                        raise LabError(f"image layer {self.image / layer} could not be extracted ({exc}); rebuild the image") from None
                shutil.rmtree(rootfs, ignore_errors=True)
                os.replace(partial, rootfs)
                (rootfs.parent / "complete").touch()
            # Mount points for the binds below; the rootfs itself is mounted read-only.
            for mount_point in ("tmp", "dev", "proc", str(self.layout.base).lstrip("/")):
                (rootfs / mount_point).mkdir(parents=True, exist_ok=True)

    def invocation(self, script: Path, out: Path, repx: Path, args: list[str]) -> Invocation:
        base = str(self.layout.base)
        path = ":".join([*self.host_tool_dirs, SANDBOX_PATH])
        device_mounts, device_env = bwrap_device_args(self.devices)
        if device_mounts:
            for point in ("sys", NIXOS_DRIVER.lstrip("/"), DRIVER_DIR.lstrip("/")):
                (self.rootfs / point).mkdir(parents=True, exist_ok=True)  # the rootfs is mounted read-only
        if self.mounts.all_host:
            root = self._host_root_args()
            home = os.environ.get("HOME", "/")
            path = ":".join([path, os.environ.get("PATH", "")]).rstrip(":")
        else:
            root = [*self._isolation_args(), "--ro-bind", str(self.rootfs), "/",
                    "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--ro-bind", base, base]
            home = "/tmp"
        argv = [
            "bwrap", *root, "--die-with-parent", "--new-session",
            "--bind", str(out), str(out), "--bind", str(repx), str(repx),
            *self._specific_path_args(), *device_mounts,
            "--clearenv", "--setenv", "PATH", path, "--setenv", "HOME", home, *device_env,
            "--chdir", str(out), "--", str(script), *args,
        ]
        return Invocation(argv, {"PATH": os.environ.get("PATH", SANDBOX_PATH)}, out)

    def _isolation_args(self) -> list[str]:
        # Upstream keeps the user namespace when host paths are mounted, so the job keeps the
        # supplementary groups that give it access to them.
        if not self.mounts.paths:
            return ["--unshare-all"]
        return ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-net", "--unshare-cgroup"]

    def _host_root_args(self) -> list[str]:
        """mount_host_paths: the host's own top-level directories instead of the image's rootfs."""
        args: list[str] = []
        for entry in sorted(Path("/").iterdir()):
            if entry.is_dir() and not entry.is_symlink() and entry.name not in HOST_DIRS_NOT_BOUND:
                args += ["--bind" if entry.name in HOST_DIRS_WRITABLE else "--ro-bind", str(entry), str(entry)]
            elif entry.is_symlink() and entry.name not in HOST_DIRS_NOT_BOUND:
                args += ["--symlink", os.readlink(entry), str(entry)]  # merged-/usr hosts: /bin -> usr/bin
        if Path("/nix/store").is_dir():
            args += ["--ro-bind", "/nix/store", "/nix/store"]
        return [*args, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--dev-bind", "/dev", "/dev", "--proc", "/proc"]

    def _specific_path_args(self) -> list[str]:
        args: list[str] = []
        for host_path in self.mounts.paths:
            point = self.rootfs / host_path.lstrip("/")  # mount points: the rootfs is mounted read-only
            if Path(host_path).is_dir():
                point.mkdir(parents=True, exist_ok=True)
            else:
                point.parent.mkdir(parents=True, exist_ok=True)
                point.touch(exist_ok=True)
            args += ["--dev-bind" if host_path.startswith("/dev/") else "--bind", host_path, host_path]
        return args


def _apply_layer(layer_tar: Path, dest: Path) -> None:
    """Extract one image layer, honouring OCI whiteouts (`.wh.<name>`, `.wh..wh..opq`)."""
    with tarfile.open(layer_tar) as tf:
        members = []
        all_members = tf.getmembers()
        symlinks = tarsafe.symlink_names(all_members)
        for m in all_members:
            name = Path(m.name)
            if name.name == ".wh..wh..opq":
                target = dest / name.parent
                if target.is_dir():
                    for child in target.iterdir():
                        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
                continue
            if name.name.startswith(".wh."):
                victim = dest / name.parent / name.name[4:]
                if victim.is_dir() and not victim.is_symlink():
                    shutil.rmtree(victim)
                elif victim.exists() or victim.is_symlink():
                    victim.unlink()
                continue
            if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                continue  # device nodes and fifos: an unprivileged rootfs cannot hold them anyway
            reason = tarsafe.unsafe_reason(m, symlinks, absolute_symlinks=True)
            if reason is not None:
                raise LabError(f"image layer {layer_tar}: member {m.name!r} {reason}; rebuild the image")
            members.append(m)
        tarsafe.extract(tf, dest, members)


@dataclass
class ContainerRuntime(Runtime):
    """podman and docker share one code path; only the program differs."""

    program: str = "podman"

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.program
    image: Path = Path()

    @property
    def tag(self) -> str:
        tags = read_image_manifest(self.image).get("RepoTags") or []
        if not tags:
            raise LabError(f"image {self.image} has no RepoTags; podman/docker need a tag to run it")
        return tags[0]

    def prepare(self) -> None:
        if shutil.which(self.program) is None:
            raise ConfigError(f"execution type {self.program} needs the `{self.program}` program, or choose --runtime native")
        self._check_mount_paths()
        tag = self.tag
        with _locked(self.layout.cache / "images" / f"{self.image.name}.{self.program}.lock"):
            if self._image_present(tag):
                return
            archive = self.layout.cache / "images" / f"{self.image.name}.tar"
            with tarfile.open(archive, "w") as tf:
                for entry in sorted(self.image.iterdir()):
                    tf.add(entry, arcname=entry.name)
            try:
                result = subprocess.run([self.program, "load", "-i", str(archive)], capture_output=True, text=True)
            finally:
                archive.unlink(missing_ok=True)
            if result.returncode != 0:
                raise RuntimePreparationError(f"{self.program} load of {self.image.name} failed: {result.stderr.strip()[-500:]}")

    def _image_present(self, tag: str) -> bool:
        probe = [self.program, "image", "exists", tag] if self.program == "podman" else [self.program, "image", "inspect", tag]
        return subprocess.run(probe, capture_output=True).returncode == 0

    def invocation(self, script: Path, out: Path, repx: Path, args: list[str]) -> Invocation:
        base = str(self.layout.base)
        argv = [self.program, "run", "--rm", "--network", "none", *container_device_args(self.devices),
                "--volume", f"{base}:{base}", *self._host_volumes(), "--workdir", str(out), self.tag, str(script), *args]
        return Invocation(argv, dict(os.environ), out)


    def _host_volumes(self) -> list[str]:
        if self.mounts.all_host:
            dirs = [d for d in CONTAINER_HOST_DIRS if Path(d).exists()]
        else:
            dirs = list(self.mounts.paths)
        return [a for d in dirs for a in ("--volume", f"{d}:{d}")]


RUNTIMES = ("native", "bwrap", "podman", "docker")


def choose_execution_type(target: TargetConfig | None, requested: str | None, has_image: bool,
                          scheduler: str = "local") -> str:
    """As upstream's resolve_execution_type (repx-client client.rs): `requested` (command line) as
    given; else, with the scheduler's section (`[targets.X.local]` or `[targets.X.slurm]`), the
    target's `default_execution_type` if that section allows it, else the section's first type;
    else (no section, no target) native. A run without an image always runs natively: there is
    nothing to sandbox it in."""
    if not has_image:
        return "native"
    local = getattr(target, scheduler) if target else None  # [targets.X.local], .slurm or .sge
    if requested:
        chosen = requested
    elif local is None:
        chosen = "native"
    elif target.default_execution_type in local.execution_types:
        chosen = target.default_execution_type
    else:
        chosen = local.execution_types[0] if local.execution_types else "native"
    if chosen not in RUNTIMES:
        raise ConfigError(f"unknown runtime {chosen!r}; choose one of {', '.join(RUNTIMES)}")
    return chosen


def make_runtime(kind: str, lab: Lab, layout: OutputLayout, image: str | None,
                 target: TargetConfig | None = None) -> Runtime:
    tools = _host_tool_dirs(lab, layout)
    if kind == "native" or image is None:
        return Runtime(layout, tools)
    img = image_dir(lab, image)
    extra = {"mounts": MountPolicy.of(target), "cache_root": target.node_local_path if target else None}
    if kind == "bwrap":
        return BwrapRuntime(layout, tools, img, **extra)
    return ContainerRuntime(layout, tools, program=kind, image=img, **extra)
