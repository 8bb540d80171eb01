"""GPUs: NVIDIA (NVML, /proc/driver/nvidia, nvidia-smi -q -x), AMD (/sys/class/drm vendor 0x1002,
the KFD topology, /dev/kfd, rocm-smi --json) and Intel (0x8086 render nodes)."""

from __future__ import annotations

import contextlib
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from .model import Gpu
from .root import Root

NVIDIA_SHARED = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
AMD_SHARED = ["/dev/kfd"]
VENDOR_IDS = {"0x10de": "nvidia", "0x1002": "amd", "0x8086": "intel"}
INTEL_MODELS = {  # a few common device ids; others show as "Intel GPU 0x...."
    "0x9a49": "Intel Iris Xe Graphics (Tiger Lake)", "0xa7a0": "Intel Iris Xe Graphics (Raptor Lake)",
    "0x46a6": "Intel Iris Xe Graphics (Alder Lake)", "0x3e9b": "Intel UHD Graphics 630",
    "0x0bd5": "Intel Data Center GPU Max 1550", "0x56a0": "Intel Arc A770",
}
NVIDIA_LIBRARIES = ("libcuda.so*", "libnvidia-ml.so*", "libnvidia-ptxjitcompiler.so*", "libnvidia-nvvm.so*")
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")


@dataclass
class Found:
    gpus: list[Gpu] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)
    driver: str | None = None
    sources: list[str] = field(default_factory=list)


def bus_id(text: str) -> str:
    """'00000000:07:00.0' (nvidia-smi), '0000:07:00.0' (procfs), '0000:2F:00.0' (rocm-smi) -> '0000:07:00.0'."""
    parts = text.strip().lower().split(":")
    if len(parts) == 2:
        parts.insert(0, "0")
    try:
        domain, bus, devfn = parts
        return f"{int(domain, 16):04x}:{int(bus, 16):02x}:{devfn}"
    except ValueError:
        return text.strip().lower()


def _mib(text: str | None) -> int | None:
    match = re.match(r"\s*(\d+)\s*MiB", text or "")
    return int(match.group(1)) * 2**20 if match else None


# ---- NVIDIA ------------------------------------------------------------------------------


def nvidia(root: Root) -> Found:
    found = Found()
    if root.live:
        nvml = _nvml()
        if nvml is not None:
            found.gpus, found.driver = nvml
            found.sources.append("nvml")
    if not found.gpus:
        proc = _nvidia_proc(root)
        smi = _nvidia_smi(root)
        if proc:
            found.sources.append("proc")
        if smi[0]:
            found.sources.append("nvidia-smi")
            found.driver = smi[1]
        by_bus = {g["pci_bus_id"]: g for g in smi[0]}
        records = proc or smi[0]
        for index, record in enumerate(sorted(records, key=lambda r: r["pci_bus_id"])):
            merged = {**by_bus.get(record["pci_bus_id"], {}), **{k: v for k, v in record.items() if v is not None}}
            found.gpus.append(_nvidia_gpu(index, merged))
        if found.driver is None:
            version = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", root.read("/proc/driver/nvidia/version") or "")
            found.driver = version.group(1) if version else None
    if found.gpus:
        found.shared = [n for n in NVIDIA_SHARED if root.device_exists(n)]
    return found


def _nvidia_gpu(index: int, r: dict) -> Gpu:
    minor = r.get("minor")
    return Gpu(id=f"nvidia:{index}", vendor="nvidia", index=index, model=r.get("model") or "NVIDIA GPU",
               uuid=r.get("uuid"), pci_bus_id=r["pci_bus_id"], memory=r.get("memory"),
               devices=[f"/dev/nvidia{minor}"] if minor is not None else [])


def _nvidia_proc(root: Root) -> list[dict]:
    """/proc/driver/nvidia/gpus/<bus>/information (nv-procfs.c: `Key: \\t value` lines)."""
    records = []
    for path in root.glob("/proc/driver/nvidia/gpus/*/information"):
        fields = {}
        for line in (root.read(path) or "").splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if fields.get("GPU Excluded", fields.get("Blacklisted", "No")) == "Yes":
            continue
        minor = fields.get("Device Minor", "")
        records.append({"pci_bus_id": bus_id(fields.get("Bus Location") or path.split("/")[-2]),
                        "model": fields.get("Model"), "uuid": fields.get("GPU UUID"),
                        "minor": int(minor) if minor.isdigit() else None, "memory": None})
    return records


def _nvidia_smi(root: Root) -> tuple[list[dict], str | None]:
    text = root.tool_output("nvidia-smi-q-x.xml")
    if not text:
        return [], None
    try:
        # The DOCTYPE names a DTD file; ElementTree ignores it.
        log = ET.fromstring(text.encode())
    except ET.ParseError:
        return [], None
    records = []
    for gpu in log.findall("gpu"):
        minor = (gpu.findtext("minor_number") or "").strip()
        records.append({"pci_bus_id": bus_id(gpu.get("id") or gpu.findtext("pci/pci_bus_id") or "0:0:0.0"),
                        "model": (gpu.findtext("product_name") or "").strip() or None,
                        "uuid": (gpu.findtext("uuid") or "").strip() or None,
                        "minor": int(minor) if minor.isdigit() else None,
                        "memory": _mib(gpu.findtext("fb_memory_usage/total"))})
    return records, (log.findtext("driver_version") or "").strip() or None


def _nvml() -> tuple[list[Gpu], str | None] | None:
    """NVML through nvidia-ml-py, when importable and a driver answers."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError: no driver, no library
        return None
    try:
        records = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name, uuid = pynvml.nvmlDeviceGetName(handle), pynvml.nvmlDeviceGetUUID(handle)
            records.append({"pci_bus_id": bus_id(_text(pynvml.nvmlDeviceGetPciInfo(handle).busId)),
                            "model": _text(name), "uuid": _text(uuid),
                            "minor": pynvml.nvmlDeviceGetMinorNumber(handle),
                            "memory": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)})
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        records.sort(key=lambda r: r["pci_bus_id"])
        return [_nvidia_gpu(i, r) for i, r in enumerate(records)], driver
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---- AMD and Intel: DRM in sysfs ---------------------------------------------------------


def _drm_cards(root: Root, vendor_id: str) -> list[dict]:
    cards = []
    for card in root.glob("/sys/class/drm/card*"):
        name = card.rsplit("/", 1)[1]
        if not re.fullmatch(r"card\d+", name):
            continue  # connectors: card0-DP-1
        if (root.read(f"{card}/device/vendor") or "").strip().lower() != vendor_id:
            continue
        uevent = dict(line.split("=", 1) for line in (root.read(f"{card}/device/uevent") or "").splitlines() if "=" in line)
        render = [p.rsplit("/", 1)[1] for p in root.glob(f"{card}/device/drm/renderD*")]
        vram = (root.read(f"{card}/device/mem_info_vram_total") or "").strip()
        cards.append({"card": name, "render": render[0] if render else None,
                      "device": (root.read(f"{card}/device/device") or "").strip().lower(),
                      "pci_bus_id": bus_id(uevent["PCI_SLOT_NAME"]) if "PCI_SLOT_NAME" in uevent else None,
                      "memory": int(vram) if vram.isdigit() else None})
    return cards


def _nodes(card: dict) -> list[str]:
    nodes = [f"/dev/dri/{card['render']}"] if card["render"] else []
    return nodes + [f"/dev/dri/{card['card']}"]


def amd(root: Root) -> Found:
    found = Found()
    cards = _drm_cards(root, "0x1002")
    if not cards:
        return found
    found.sources.append("sysfs")
    order = _kfd_order(root)
    if order:
        found.sources.append("kfd")
        cards.sort(key=lambda c: order.get(c["render"], 1 << 30))
    smi = _rocm_smi(root)
    if smi:
        found.sources.append("rocm-smi")
    for index, card in enumerate(cards):
        info = smi.get(card["pci_bus_id"]) or {}
        unique = info.get("unique id") or ""
        uuid = f"GPU-{unique[2:] if unique.startswith('0x') else unique}" if unique and unique != "N/A" else None
        memory = info.get("vram total memory (b)")
        found.gpus.append(Gpu(id=f"amd:{index}", vendor="amd", index=index,
                              model=info.get("card series") or info.get("device name") or f"AMD GPU {card['device']}",
                              uuid=uuid, pci_bus_id=card["pci_bus_id"],
                              memory=int(memory) if memory and memory.isdigit() else card["memory"],
                              devices=_nodes(card)))
    found.driver = smi.get("driver")
    found.shared = [n for n in AMD_SHARED if root.device_exists(n)]
    return found


def _kfd_order(root: Root) -> dict[str, int]:
    """renderD<minor> -> its GPU's position among KFD topology nodes: the order ROCr numbers
    agents in, and so what ROCR_VISIBLE_DEVICES indexes."""
    nodes = []
    for path in root.glob("/sys/class/kfd/kfd/topology/nodes/*/properties"):
        props = dict(line.split(None, 1) for line in (root.read(path) or "").splitlines() if " " in line)
        minor = int(props.get("drm_render_minor", "0").strip() or 0)
        if minor > 0 and int(props.get("simd_count", "0")) > 0:
            nodes.append((int(path.split("/")[-2]), f"renderD{minor}"))
    return {render: position for position, (_node, render) in enumerate(sorted(nodes))}


def _rocm_smi(root: Root) -> dict:
    """bus id -> the card's rocm-smi fields (keys lower-cased: ROCm 5 says "Card series", 6 "Card Series")."""
    text = root.tool_output("rocm-smi.json")
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    out: dict = {}
    for key, fields in data.items():
        if not isinstance(fields, dict):
            continue
        lowered = {k.lower(): str(v) for k, v in fields.items()}
        if key == "system":
            out["driver"] = lowered.get("driver version")
        elif key.startswith("card") and "pci bus" in lowered:
            out[bus_id(lowered["pci bus"])] = lowered
    return out


def intel(root: Root) -> Found:
    found = Found()
    for index, card in enumerate(sorted(_drm_cards(root, "0x8086"), key=lambda c: c["render"] or "")):
        found.gpus.append(Gpu(id=f"intel:{index}", vendor="intel", index=index,
                              model=INTEL_MODELS.get(card["device"], f"Intel GPU {card['device']}"),
                              pci_bus_id=card["pci_bus_id"], memory=card["memory"], devices=_nodes(card)))
    if found.gpus:
        found.sources.append("sysfs")
    return found


# ---- what containers and sandboxes need besides the nodes --------------------------------


def cdi_kinds(root: Root) -> list[str]:
    """Device kinds with a CDI spec (/etc/cdi, /var/run/cdi): podman can then inject them."""
    kinds = set()
    for pattern in ("/etc/cdi/*", "/var/run/cdi/*", "/run/cdi/*"):
        for path in root.glob(pattern):
            text = root.read(path) or ""
            match = re.search(r'^kind:\s*"?([\w.-]+/[\w.-]+)"?', text, re.M) or re.search(r'"kind"\s*:\s*"([^"]+)"', text)
            if match:
                kinds.add(match.group(1))
    return sorted(kinds)


def driver_paths(root: Root, vendors: set[str]) -> list[str]:
    """NixOS puts the driver's user-space under /run/opengl-driver; elsewhere, NVIDIA's libraries
    (ROCm and Level Zero user space comes with the image)."""
    if root.exists("/run/opengl-driver"):
        return ["/run/opengl-driver"]
    if "nvidia" not in vendors:
        return []
    for directory in LIBRARY_DIRS:
        libraries = [p for pattern in NVIDIA_LIBRARIES for p in root.glob(f"{directory}/{pattern}")]
        if libraries:
            return sorted(libraries)
    return []
