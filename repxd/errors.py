"""Errors a user can act on. Each carries one readable sentence; callers map them to exit 2."""


class RepxError(Exception):
    """A problem with the user's input (Lab, config, command line): exit code 2, no traceback."""

    exit_code = 2


class LabError(RepxError):
    """The Lab is malformed, incomplete or inconsistent."""


class ConfigError(RepxError):
    """A config.toml or resources.toml is invalid."""


class SelectionError(RepxError):
    """A selector (run, @group, job-id prefix) names nothing, or more than one job."""


class DependencyCancelled(Exception):
    """A job submitted to start after another cluster job was cancelled because that one failed:
    not this job's outcome (its predecessor's failure blocks it)."""
