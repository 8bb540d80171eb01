"""Installing the unit files shipped in the package on a systemd distribution (not NixOS,
whose module uses the same files)."""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

UNITS = ("repx-api.service", "repx-scheduler.service", "repx-agent.service", "repx-hwdetect.service", "repx.target",
         "repx-jobs.slice")
EXTRAS = {"repx.sysusers": "etc/sysusers.d/repx.conf", "repx.tmpfiles": "etc/tmpfiles.d/repx.conf",
          "repx.polkit.rules": "etc/polkit-1/rules.d/60-repx.rules"}


def repxd_executable() -> str:
    found = shutil.which("repxd")
    return str(Path(found).resolve()) if found else str(Path(sys.executable).with_name("repxd"))


def unit_text(name: str, repxd: str | None = None) -> str:
    text = resources.files("repxd").joinpath("systemd", name).read_text()
    return text.replace("@REPXD@", repxd or repxd_executable())


def install_units(prefix: Path, repxd: str | None = None) -> list[Path]:
    """Write the units under `<prefix>/etc/systemd/system`, sysusers.d and tmpfiles.d entries;
    returns the paths written."""
    written = []
    unit_dir = prefix / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True, exist_ok=True)
    for name in UNITS:
        path = unit_dir / name
        path.write_text(unit_text(name, repxd))
        written.append(path)
    for name, rel in EXTRAS.items():
        path = prefix / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(unit_text(name, repxd))
        written.append(path)
    return written
