"""An SSH target for a run: connect, bring the remote up to date (bootstrap, repx's helper, the
Lab's artifacts), then hand out the launcher that runs the jobs there."""

from __future__ import annotations

import asyncio
import secrets
from contextlib import contextmanager
from dataclasses import dataclass, field

from ...errors import ConfigError, RepxError
from ...exec.artifacts import verified_executable
from ...exec.layout import OutputLayout
from ...exec.runtimes import Runtime
from ...lab.model import Lab
from ...user_config import TargetConfig
from ..commands import CommandMissing
from .connection import (
    SshConnection,
    SshError,
    SshUnreachable,
    connection_for,
    is_connection_problem,
)
from .images import helper_path, images_tree, remote_runtime
from .launcher import HELPER, Mirror, SshLauncher
from .sync import RemoteBase


class TargetUnavailable(RepxError):
    """The SSH target could not be reached or prepared: not the user's input, so exit 1."""

    exit_code = 1

    def __init__(self, message: str, connection_problem: bool) -> None:
        super().__init__(message)
        self.connection_problem = connection_problem


def ssh_runtime(target_name: str, kind: str, lab: Lab, layout: OutputLayout, image: str | None,
                target: TargetConfig) -> Runtime:
    """A job's runtime on the SSH target's host (prepared): native, or bwrap with its image."""
    if target.default_scheduler == "slurm" and kind != "native":  # resolved: the target's, else the config's
        raise ConfigError(f"target {target_name!r} (ssh, its SLURM) runs jobs natively only in this version, not with"
                          f" {kind}; use default_scheduler = \"local\" on this host for Labs with images")
    helper = helper_path(layout.base, HELPER.name, HELPER.read_bytes())
    runtime = remote_runtime(target_name, kind, lab, layout, image, target, helper)
    runtime.prepare()
    return runtime


@dataclass
class SshTarget:
    name: str
    config: TargetConfig
    layout: OutputLayout  # the local mirror
    connection: SshConnection | None = field(default=None, init=False)
    remote: RemoteBase | None = field(default=None, init=False)
    launcher: SshLauncher | None = field(default=None, init=False)

    def prepare_executables(self, lab: Lab, job_ids: list[str]) -> None:
        """The verified copies jobs run (artifacts/.repx-content/), made before the artifacts are
        sent: locally they are made as jobs start, but the remote has only what was synced."""
        for job_id in job_ids:
            for exe in lab.jobs[job_id].executables.values():
                verified_executable(lab, self.layout, exe.path)

    async def open(self) -> SshLauncher:
        """Connect and bootstrap the remote, deploy repx's helper: the launcher for its jobs."""
        with _unavailable():
            self.connection = connection_for(self.name, self.config)
            self.remote = RemoteBase(self.connection, self.config.base_path)
            await self.remote.bootstrap()
            helper = await self.remote.deploy_helper(HELPER.name, HELPER.read_bytes())
            # Jobs change directory: every path they are given must be absolute.
            found = await self.connection.run(["sh", "-c", 'cd "$1" && pwd', "sh", self.remote.base])
            if not found.ok or not found.stdout.startswith("/"):
                raise SshError(f"target {self.name!r}: cannot resolve base path {self.remote.base}: {found.failure()}")
        launcher = SshLauncher(self.connection, Mirror(self.layout.base, found.stdout.strip()), helper,
                               transient=(SshUnreachable,))
        if self.config.local and self.config.local.poll_interval:
            launcher.poll_interval = self.config.local.poll_interval
        await launcher.reconcile()  # what a repx that stopped early left out of the remote layout
        self.launcher = launcher
        if self.config.default_scheduler == "slurm":  # resolved: the target's, else the config's
            return await self._remote_slurm(launcher)
        return launcher

    async def flush(self) -> None:
        """The markers waiting for the next poll cycle sent now (the daemon is stopping)."""
        if self.launcher is not None:
            await self.launcher.flush()

    async def _remote_slurm(self, markers: SshLauncher):
        """The launcher submitting to the remote's SLURM (remote_slurm), its markers sent by `markers`."""
        from .remote_slurm import HELPER as SLURM_HELPER
        from .remote_slurm import remote_slurm_launcher

        with _unavailable():
            helper = await self.remote.deploy_helper(SLURM_HELPER.name, SLURM_HELPER.read_bytes())
            return await remote_slurm_launcher(self.connection, self.config, markers.mirror, helper, markers,
                                               secrets.token_hex(4), self.layout.cache / "slurm")

    async def push_lab(self, lab: Lab, job_ids: list[str]) -> None:
        """The Lab's artifacts (and the verified copies these jobs run) to the remote, and the
        layers of their images it does not have yet."""
        await asyncio.to_thread(self.prepare_executables, lab, job_ids)
        images = await asyncio.to_thread(images_tree, lab, self.layout, job_ids)
        with _unavailable():
            await self.remote.push_artifacts(self.layout.artifacts, images=images)

    async def close(self) -> None:
        """The markers of the last jobs sent first: the remote base keeps upstream's layout."""
        if self.launcher is not None:
            await self.launcher.flush()
        if self.connection is not None:
            await self.connection.close()


@contextmanager
def _unavailable():
    """SSH and sync failures as one line for the user; connection problems marked as such."""
    try:
        yield
    except (SshError, CommandMissing) as exc:
        hint = " (try again when the host is back)" if is_connection_problem(exc) else ""
        raise TargetUnavailable(f"{exc}{hint}", is_connection_problem(exc)) from None
