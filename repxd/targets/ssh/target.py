"""An SSH target for one run: connect, bring the remote up to date (bootstrap, the Lab's
artifacts, repx's helper), then hand out the launcher that runs the jobs there."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ...config import TargetConfig
from ...errors import ConfigError
from ...exec.artifacts import verified_executable
from ...exec.layout import OutputLayout
from ...lab.model import Lab
from .connection import SshConnection
from .launcher import HELPER, Mirror, SshLauncher
from .sync import RemoteSync


def native_only(target_name: str, kind: str) -> None:
    if kind != "native":
        raise ConfigError(f"target {target_name!r} (ssh) runs jobs natively only in this version, not with {kind};"
                          " drop --runtime, or use a local target for Labs with images")


@dataclass
class SshTarget:
    name: str
    config: TargetConfig
    layout: OutputLayout  # the local mirror
    connection: SshConnection | None = field(default=None, init=False)
    sync: RemoteSync | None = field(default=None, init=False)

    def prepare_executables(self, lab: Lab, job_ids: list[str]) -> None:
        """The verified copies jobs run (artifacts/.repx-content/), made before the artifacts are
        sent: locally they are made as jobs start, but the remote has only what was synced."""
        for job_id in job_ids:
            for exe in lab.jobs[job_id].executables.values():
                verified_executable(lab, self.layout, exe.path)

    async def open(self) -> SshLauncher:
        """Connect and bootstrap the remote, deploy repx's helper: the launcher for its jobs."""
        self.connection = SshConnection.for_target(self.name, self.config)
        self.sync = RemoteSync(self.connection, self.name, self.config, self.layout)
        await self.sync.bootstrap()
        helper = await self.sync.deploy_helper(HELPER.name, HELPER.read_text())
        launcher = SshLauncher(self.connection, Mirror(self.layout.base, self.sync.remote_base), helper,
                               transient=self.connection.connection_errors)
        if self.config.local and self.config.local.poll_interval:
            launcher.poll_interval = self.config.local.poll_interval
        return launcher

    async def push_lab(self, lab: Lab, job_ids: list[str]) -> None:
        """The Lab's artifacts (and the verified copies these jobs run) to the remote."""
        await asyncio.to_thread(self.prepare_executables, lab, job_ids)
        await self.sync.push_artifacts()

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
