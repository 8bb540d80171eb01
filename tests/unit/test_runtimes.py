"""The exact command lines each runtime produces (with the device flags for an attempt's GPUs,
from fixture inventories), and how the runtime is chosen."""

from __future__ import annotations

from pathlib import Path

import pytest

from repxd.errors import ConfigError
from repxd.exec.layout import OutputLayout
from repxd.exec.runtimes import BwrapRuntime, ContainerRuntime, Runtime, choose_execution_type
from repxd.hardware import Inventory, detect, grant_for
from repxd.user_config import TargetConfig

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hardware"


@pytest.fixture
def image(tmp_path) -> Path:
    img = tmp_path / "lab" / "images" / "abc-img"
    img.mkdir(parents=True)
    (img / "manifest.json").write_text('[{"Config": "c.json", "RepoTags": ["repx/img:1"], "Layers": ["l/layer.tar"]}]')
    return img


def paths(tmp_path):
    base = tmp_path / "base"
    return OutputLayout(base), base / "artifacts/jobs/j/bin/s", base / "outputs/j/out", base / "outputs/j/repx"


def test_native_prepends_host_tools(tmp_path):
    layout, script, out, repx = paths(tmp_path)
    inv = Runtime(layout, ["/tools/bin"]).invocation(script, out, repx, ["a", "b", "c"])
    assert inv.argv == [str(script), "a", "b", "c"]
    assert inv.env["PATH"].startswith("/tools/bin:") and inv.cwd == out


def test_bwrap_mounts_only_out_and_repx_writable(tmp_path, image):
    layout, script, out, repx = paths(tmp_path)
    argv = BwrapRuntime(layout, [], image).invocation(script, out, repx, ["o", "i", "p"]).argv
    base = str(layout.base)
    assert argv[0] == "bwrap" and "--unshare-all" in argv and "--clearenv" in argv
    assert ["--ro-bind", str(layout.cache / "images" / "abc-img" / "rootfs"), "/"] == argv[argv.index("--ro-bind"):argv.index("--ro-bind") + 3]
    assert argv[argv.index(base) - 1] == "--ro-bind"
    writable = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
    assert writable == [str(out), str(repx)]
    assert argv[argv.index("--chdir") + 1] == str(out)
    assert argv[argv.index("--") + 1:] == [str(script), "o", "i", "p"]


@pytest.mark.parametrize("program", ["podman", "docker"])
def test_containers_share_one_command_line(tmp_path, image, program):
    layout, script, out, repx = paths(tmp_path)
    runtime = ContainerRuntime(layout, [], program=program, image=image)
    argv = runtime.invocation(script, out, repx, ["o", "i", "p"]).argv
    base = str(layout.base)
    assert runtime.name == program
    assert argv == [program, "run", "--rm", "--network", "none", "--volume", f"{base}:{base}",
                    "--workdir", str(out), "repx/img:1", str(script), "o", "i", "p"]


def test_choice_of_execution_type():
    """Upstream resolve_execution_type (repx-client client.rs): an explicit type as given; else the
    target's default_execution_type when its scheduler section allows it, else that section's first
    type, else native; no scheduler section at all: native."""
    target = TargetConfig(base_path="/x", default_execution_type="bwrap", local={"execution_types": ["bwrap", "native"]})
    assert choose_execution_type(target, None, has_image=True) == "bwrap"
    assert choose_execution_type(target, "native", has_image=True) == "native"
    assert choose_execution_type(target, "podman", has_image=True) == "podman"  # explicit: not filtered
    assert choose_execution_type(target, "bwrap", has_image=False) == "native"
    assert choose_execution_type(None, None, has_image=True) == "native"
    # The default is not allowed: the first allowed type, not an error.
    podman_only = TargetConfig(base_path="/x", default_execution_type="bwrap", local={"execution_types": ["podman", "native"]})
    assert choose_execution_type(podman_only, None, has_image=True) == "podman"
    # No [targets.X.local] section: native, whatever default_execution_type says.
    no_section = TargetConfig(base_path="/x", default_execution_type="bwrap")
    assert choose_execution_type(no_section, None, has_image=True) == "native"
    # A section with an empty list: native.
    empty = TargetConfig(base_path="/x", default_execution_type="bwrap", local={})
    assert choose_execution_type(empty, None, has_image=True) == "native"
    with pytest.raises(ConfigError, match="unknown runtime"):
        choose_execution_type(target, "qemu", has_image=True)


def inventory(name: str, **changes) -> Inventory:
    inv = detect(FIXTURES / name / "root", FIXTURES / name / "tools")
    return inv.model_copy(update=changes)


def test_native_sets_visibility_variables(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    layout, script, out, repx = paths(tmp_path)
    runtime = Runtime(layout, [])
    env = runtime.with_devices(grant_for(inventory("nvidia-dgx-a100"), ["nvidia:2", "nvidia:6"])).invocation(script, out, repx, []).env
    assert (env["CUDA_VISIBLE_DEVICES"], env["CUDA_DEVICE_ORDER"]) == ("2,6", "PCI_BUS_ID")
    env = runtime.with_devices(grant_for(inventory("amd-mi250"), ["amd:1", "amd:3"])).invocation(script, out, repx, []).env
    assert env["ROCR_VISIBLE_DEVICES"] == "1,3" and "CUDA_VISIBLE_DEVICES" not in env
    env = runtime.with_devices(grant_for(inventory("intel-laptop"), ["intel:0"])).invocation(script, out, repx, []).env
    assert env["ZE_AFFINITY_MASK"] == "0"
    # No GPUs assigned on a NVIDIA node: CUDA sees none; on a CPU-only host nothing is set.
    assert runtime.with_devices(grant_for(inventory("nvidia-dgx-a100"), [])).invocation(script, out, repx, []).env["CUDA_VISIBLE_DEVICES"] == ""
    assert "CUDA_VISIBLE_DEVICES" not in runtime.with_devices(grant_for(inventory("cpu-vm"), [])).invocation(script, out, repx, []).env
    assert "CUDA_VISIBLE_DEVICES" not in runtime.invocation(script, out, repx, []).env


def test_bwrap_binds_the_nodes_and_the_driver_libraries(tmp_path, image):
    layout, script, out, repx = paths(tmp_path)
    grant = grant_for(inventory("nvidia-dgx-a100"), ["nvidia:1"])
    argv = BwrapRuntime(layout, [], image).with_devices(grant).invocation(script, out, repx, ["o", "i", "p"]).argv
    lib = "/usr/lib/x86_64-linux-gnu"
    expected = ["--dev-bind", "/dev/nvidia1", "/dev/nvidia1",
                "--dev-bind", "/dev/nvidiactl", "/dev/nvidiactl",
                "--dev-bind", "/dev/nvidia-uvm", "/dev/nvidia-uvm",
                "--dev-bind", "/dev/nvidia-uvm-tools", "/dev/nvidia-uvm-tools",
                "--tmpfs", "/run/repx-driver"]
    for name in ("libcuda.so.1", "libcuda.so.535.129.03", "libnvidia-ml.so.1", "libnvidia-ml.so.535.129.03",
                 "libnvidia-ptxjitcompiler.so.1", "libnvidia-ptxjitcompiler.so.535.129.03"):
        expected += ["--ro-bind", f"{lib}/{name}", f"/run/repx-driver/lib/{name}"]
    start = argv.index("--dev-bind")
    assert argv[start:argv.index("--clearenv")] == expected
    env = argv[argv.index("--clearenv"):argv.index("--chdir")]
    assert env[-6:] == ["--setenv", "LD_LIBRARY_PATH", "/run/repx-driver/lib",
                        "--setenv", "CUDA_VISIBLE_DEVICES", "GPU-9b1c3d5e-7f80-4a2b-9c6d-1e2f3a4b5c6d"]
    assert "/dev/nvidia0" not in argv and argv[argv.index("--") + 1:] == [str(script), "o", "i", "p"]


def test_bwrap_on_nixos_binds_opengl_driver_and_amd_needs_sysfs(tmp_path, image):
    layout, script, out, repx = paths(tmp_path)
    nixos = inventory("nvidia-dgx-a100", driver_paths=["/run/opengl-driver"])
    argv = BwrapRuntime(layout, [], image).with_devices(grant_for(nixos, ["nvidia:0"])).invocation(script, out, repx, []).argv
    assert argv[argv.index("--dev-bind"):argv.index("--clearenv")] == [
        "--dev-bind", "/dev/nvidia0", "/dev/nvidia0", "--dev-bind", "/dev/nvidiactl", "/dev/nvidiactl",
        "--dev-bind", "/dev/nvidia-uvm", "/dev/nvidia-uvm", "--dev-bind", "/dev/nvidia-uvm-tools", "/dev/nvidia-uvm-tools",
        "--ro-bind", "/run/opengl-driver", "/run/opengl-driver"]
    amd = grant_for(inventory("amd-mi250"), ["amd:0"])
    argv = BwrapRuntime(layout, [], image).with_devices(amd).invocation(script, out, repx, []).argv
    assert argv[argv.index("--dev-bind"):argv.index("--clearenv")] == [
        "--dev-bind", "/dev/dri/renderD129", "/dev/dri/renderD129", "--dev-bind", "/dev/dri/card2", "/dev/dri/card2",
        "--dev-bind", "/dev/kfd", "/dev/kfd", "--ro-bind", "/sys", "/sys"]
    rootfs = layout.cache / "images" / "abc-img" / "rootfs"
    assert (rootfs / "sys").is_dir() and (rootfs / "run" / "opengl-driver").is_dir()  # mount points
    plain = BwrapRuntime(layout, [], image).invocation(script, out, repx, []).argv
    assert "--dev-bind" not in plain and "LD_LIBRARY_PATH" not in plain


def test_podman_uses_cdi_when_the_host_has_a_spec(tmp_path, image):
    layout, script, out, repx = paths(tmp_path)
    base = str(layout.base)
    grant = grant_for(inventory("nvidia-dgx-a100"), ["nvidia:4", "nvidia:7"])
    argv = ContainerRuntime(layout, [], program="podman", image=image).with_devices(grant).invocation(script, out, repx, ["o"]).argv
    assert argv == ["podman", "run", "--rm", "--network", "none",
                    "--device", "nvidia.com/gpu=4", "--device", "nvidia.com/gpu=7",
                    "--volume", f"{base}:{base}", "--workdir", str(out), "repx/img:1", str(script), "o"]


def test_podman_without_cdi_gets_device_nodes(tmp_path, image):
    layout, script, out, repx = paths(tmp_path)
    base = str(layout.base)
    nixos = inventory("nvidia-dgx-a100", cdi=[], driver_paths=["/run/opengl-driver"])
    argv = ContainerRuntime(layout, [], program="podman", image=image).with_devices(grant_for(nixos, ["nvidia:4"])).invocation(script, out, repx, []).argv
    assert argv == ["podman", "run", "--rm", "--network", "none",
                    "--device", "/dev/nvidia4", "--device", "/dev/nvidiactl", "--device", "/dev/nvidia-uvm",
                    "--device", "/dev/nvidia-uvm-tools", "--volume", "/run/opengl-driver:/run/opengl-driver:ro",
                    "--volume", f"{base}:{base}", "--workdir", str(out), "repx/img:1", str(script)]
    amd = grant_for(inventory("amd-mi250"), ["amd:2"])
    argv = ContainerRuntime(layout, [], program="docker", image=image).with_devices(amd).invocation(script, out, repx, []).argv
    assert argv[:argv.index("--volume")] == ["docker", "run", "--rm", "--network", "none", "--device", "/dev/dri/renderD131",
                                             "--device", "/dev/dri/card4", "--device", "/dev/kfd"]
    plain = ContainerRuntime(layout, [], program="podman", image=image).invocation(script, out, repx, []).argv
    assert "--device" not in plain
