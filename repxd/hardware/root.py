"""Reading a system through a root prefix, so every reader runs against a recorded tree.

A recorded tree cannot hold device nodes (no mknod in git): it lists them, one absolute path a
line, in `<root>/dev.manifest`. Tool outputs (`nvidia-smi -q -x`, `rocm-smi --json`) come from the
live programs on "/" or from files in a tools directory beside a recording."""

from __future__ import annotations

import fnmatch
import glob
import os
import shutil
import subprocess
from pathlib import Path

DEVICE_MANIFEST = "dev.manifest"
TOOL_TIMEOUT_SECONDS = 30

# Recorded file name -> the command whose output it is.
TOOLS: dict[str, list[str]] = {
    "nvidia-smi-q-x.xml": ["nvidia-smi", "-q", "-x"],
    "rocm-smi.json": ["rocm-smi", "--showproductname", "--showmeminfo", "vram", "--showbus",
                      "--showuniqueid", "--json"],
}


class Root:
    """A filesystem prefix ("/" for the live system)."""

    def __init__(self, prefix: str | Path = "/", tools: str | Path | None = None) -> None:
        self.prefix = Path(prefix)
        self.tools = Path(tools) if tools is not None else None
        self.live = self.prefix == Path("/")
        manifest = self.prefix / DEVICE_MANIFEST
        self._devices: set[str] | None = None
        if not self.live and manifest.is_file():
            self._devices = {line.strip() for line in manifest.read_text().splitlines()
                             if line.strip() and not line.startswith("#")}

    def path(self, absolute: str) -> Path:
        return self.prefix / absolute.lstrip("/")

    def read(self, absolute: str) -> str | None:
        try:
            return self.path(absolute).read_text(errors="replace")
        except OSError:
            return None

    def glob(self, pattern: str) -> list[str]:
        """Absolute paths (as seen inside the root) matching `pattern`, sorted."""
        base = str(self.prefix).rstrip("/")
        return sorted("/" + os.path.relpath(p, base) if base else p
                      for p in glob.glob(str(self.path(pattern))))

    def exists(self, absolute: str) -> bool:
        return self.path(absolute).exists()

    def device_exists(self, node: str) -> bool:
        """A device node: on a recording, listed in the manifest (or present as a placeholder)."""
        if self._devices is not None and node in self._devices:
            return True
        return self.path(node).exists()

    def devices(self, pattern: str) -> list[str]:
        found = set(self.glob(pattern))
        if self._devices is not None:
            found |= {d for d in self._devices if fnmatch.fnmatchcase(d, pattern)}
        return sorted(found)

    def tool_output(self, name: str) -> str | None:
        """A recorded tool output from the tools directory; on "/" without one, the live program."""
        if self.tools is not None:
            try:
                return (self.tools / name).read_text()
            except OSError:
                return None
        if not self.live:
            return None  # the host's programs describe the host, not a recording
        argv = TOOLS[name]
        if shutil.which(argv[0]) is None:
            return None
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout if result.returncode == 0 else None
