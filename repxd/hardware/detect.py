"""Detecting the inventory, writing it (`repxd hwdetect`) and reading it back (the agent)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pydantic import ValidationError

from ..errors import ConfigError
from . import gpus as g
from .host import cpu, hostname, memory
from .model import Inventory
from .root import Root

DEFAULT_FILE = Path("/run/repx/hardware.json")
ENV_FILE, ENV_ROOT, ENV_TOOLS = "REPX_HARDWARE_FILE", "REPX_HARDWARE_ROOT", "REPX_HARDWARE_TOOLS"


def detect(root: str | Path = "/", tools: str | Path | None = None) -> Inventory:
    """Everything under `root`; tool outputs from `tools` (recorded) or, on "/", the live programs."""
    r = Root(root, tools)
    found = [g.nvidia(r), g.amd(r), g.intel(r)]
    gpus = [gpu for f in found for gpu in f.gpus]
    vendors = {gpu.vendor for gpu in gpus}
    sources = ["proc"] + [s for f in found for s in f.sources if s != "proc"]
    return Inventory(
        host=hostname(r), root=str(r.prefix), detected_at=time.time(), cpu=cpu(r), memory=memory(r), gpus=gpus,
        shared_devices={f.gpus[0].vendor: f.shared for f in found if f.gpus and f.shared},
        drivers={f.gpus[0].vendor: f.driver for f in found if f.gpus and f.driver},
        driver_paths=g.driver_paths(r, vendors), cdi=g.cdi_kinds(r) if gpus else [],
        sources=list(dict.fromkeys(sources)))


def write_inventory(inventory: Inventory, path: Path) -> None:
    """Atomically: the agent may read it while hwdetect runs again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(inventory.model_dump_json(indent=2) + "\n")
    os.replace(partial, path)


def read_inventory(path: Path) -> Inventory:
    try:
        return Inventory.model_validate_json(path.read_text())
    except OSError as exc:
        raise ConfigError(f"hardware inventory {path}: cannot read ({exc.strerror}); run `repxd hwdetect`") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "document"
        raise ConfigError(f"hardware inventory {path}: {where}: {err['msg']}; run `repxd hwdetect` again") from None


def boot_time(root: Root | None = None) -> float:
    text = (root or Root()).read("/proc/stat") or ""
    for line in text.splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def fresh(path: Path) -> bool:
    """Written since the last boot: devices do not change without one (hotplug aside)."""
    try:
        return path.stat().st_mtime >= boot_time()
    except OSError:
        return False


def agent_inventory(file: Path | None = None, root: Path | None = None, tools: Path | None = None) -> Inventory:
    """What an agent registers with. $REPX_HARDWARE_FILE / _ROOT / _TOOLS override the settings.
    A named file must be readable; a root is detected in-process; otherwise the hwdetect unit's
    /run/repx/hardware.json when written this boot, else detection of "/" in-process."""
    file = Path(os.environ[ENV_FILE]) if os.environ.get(ENV_FILE) else file
    root = Path(os.environ[ENV_ROOT]) if os.environ.get(ENV_ROOT) else root
    tools = Path(os.environ[ENV_TOOLS]) if os.environ.get(ENV_TOOLS) else tools
    if file is not None:
        return read_inventory(file)
    if root is not None and root != Path("/"):
        return detect(root, tools)
    if tools is None and DEFAULT_FILE.is_file() and fresh(DEFAULT_FILE):
        try:
            return read_inventory(DEFAULT_FILE)
        except ConfigError:
            pass  # a stale format: detect again below
    return detect("/", tools)


def hardware_root(setting: Path | None = None) -> Path:
    """Where the agent checks device nodes before a start (a recording's prefix in tests)."""
    return Path(os.environ.get(ENV_ROOT) or setting or "/")


def as_json(inventory: Inventory) -> dict:
    return json.loads(inventory.model_dump_json())
