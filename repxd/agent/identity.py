"""Whom a job runs as. A job has its submitter's powers, never the daemon's (DESIGN.md)."""

from __future__ import annotations

import os
import pwd

from ..errors import RepxError


class JobRefused(RepxError):
    """The job cannot run as anyone it may run as here; the reason says what an admin can change."""


def job_uid(submitter_uid: int | None, *, run_as_submitter: bool, job_user: str | None,
            allow_daemon_user: bool, can_switch: bool, daemon_uid: int | None = None) -> int | None:
    """The uid to start the job as, or None for the agent's own. Socket submissions run as their
    submitter; token submissions (no uid) as `job_user` (default `nobody` where the agent can
    switch users). Running as the agent's own user is allowed only for its own submissions (a
    personal daemon) or when the administrator set `allow_daemon_user` (which also keeps jobs with
    no user of their own, token callers' and root's, as the daemon's)."""
    daemon = os.geteuid() if daemon_uid is None else daemon_uid
    if submitter_uid is not None and submitter_uid <= 0:
        # Token callers are recorded with uid -1: they have no Unix identity. Root's runs get no
        # root jobs either: they run as job_user like a token caller's.
        submitter_uid = None
    if submitter_uid is None and allow_daemon_user:
        return None  # the administrator chose the daemon's identity for jobs with no user of their own
    if submitter_uid is not None and run_as_submitter:
        target = submitter_uid
    elif job_user is not None:
        target = _uid_of(job_user)
    else:
        target = _uid_of("nobody") if can_switch else daemon
    if target == daemon:
        if submitter_uid == daemon or allow_daemon_user:
            return None
        raise JobRefused(f"this job would run as the agent's own user (uid {daemon}), which holds the daemon's powers; "
                         "set agent.job_user to an unprivileged user, or agent.allow_jobs_as_daemon_user = true")
    if can_switch:
        return target
    if allow_daemon_user:
        return None
    raise JobRefused(f"the agent runs as uid {daemon} without systemd units and cannot start jobs as uid {target}; "
                     'run the agent as root, use agent.launcher = "systemd", or set agent.allow_jobs_as_daemon_user = true')


def _uid_of(user: str) -> int:
    try:
        return int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    except KeyError:
        raise JobRefused(f"agent.job_user {user!r} is not a user on this machine; create it or name another") from None
