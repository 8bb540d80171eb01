"""The exact command lines each runtime produces, and how the runtime is chosen."""

from __future__ import annotations

from pathlib import Path

import pytest

from repxd.config import TargetConfig
from repxd.errors import ConfigError
from repxd.exec.layout import OutputLayout
from repxd.exec.runtimes import BwrapRuntime, ContainerRuntime, Runtime, choose_execution_type


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
    target = TargetConfig(base_path="/x", default_execution_type="bwrap", local={"execution_types": ["bwrap", "native"]})
    assert choose_execution_type(target, None, has_image=True) == "bwrap"
    assert choose_execution_type(target, "native", has_image=True) == "native"
    assert choose_execution_type(target, "bwrap", has_image=False) == "native"
    assert choose_execution_type(None, None, has_image=True) == "native"
    with pytest.raises(ConfigError, match="execution_types"):
        choose_execution_type(target, "podman", has_image=True)
