"""`repxctl pull RUN --target T` as a user types it: outputs of a run made on the remote come back,
byte for byte, and a second pull sends nothing new."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

from conftest import missing

ROOT = Path(__file__).resolve().parents[3]


def repxctl(home: Path, *args: object, code: int = 0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPX_")}
    for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        env[var] = str(home / var.lower())
    proc = subprocess.run([sys.executable, "-c", "from repxctl.main import main; main()", *map(str, args)],
                          cwd=home, env=env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, f"repxctl {args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def same_tree(a: Path, b: Path) -> bool:
    compared = filecmp.dircmp(a, b)
    if compared.left_only or compared.right_only or compared.funny_files:
        return False
    if filecmp.cmpfiles(a, b, compared.common_files, shallow=False)[1:] != ([], []):
        return False
    return all(same_tree(a / d, b / d) for d in compared.common_dirs)


def test_pull_round_trip(ssh_host, tmp_path):
    if os.system("command -v rsync >/dev/null") != 0:
        missing("rsync not installed (apt install rsync; .ci/run does)")
    sys.path.insert(0, str(ROOT / "examples" / "labs"))
    try:
        import definitions
    finally:
        sys.path.pop(0)
    home = tmp_path / "home"
    home.mkdir()
    lab = definitions.build("simple", tmp_path / "lab")
    # The run's outputs as the remote would have them: made by a real run, then placed there.
    made = tmp_path / "made"
    repxctl(home, "run", "simulation", "--lab", lab, "--base-path", made)
    remote_base = f"/home/{ssh_host.user}/pull-base"
    ssh_host.ssh(f"mkdir -p {remote_base}")
    subprocess.run(["rsync", "-a", "-e", f"ssh -F {ssh_host.ssh_config}", f"{made}/outputs/",
                    f"repx-remote:{remote_base}/outputs/"], check=True, capture_output=True)
    config = home / "xdg_config_home" / "repx" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[targets.remote]\naddress = "repx-remote"\nbase_path = "~/pull-base"\n'
                      f'[targets.remote.ssh]\nconfig_file = "{ssh_host.ssh_config}"\n')

    first = repxctl(home, "pull", "simulation", "--target", "remote", "--lab", lab)
    pulled = home / "xdg_state_home" / "repx" / "targets" / "remote" / "outputs"
    assert first.stdout.startswith(f"pulled 3 jobs' outputs from remote into {pulled}: ")
    jobs = sorted(p.name for p in (made / "outputs").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 3
    for job in jobs:
        assert same_tree(made / "outputs" / job, pulled / job), job
    # What `repxctl show` reads locally now sees the run as done.
    listing = repxctl(home, "list", "jobs", "simulation", "--lab", lab, "--base-path", pulled.parent)
    assert listing.stdout.count(" Succeeded ") == 3, listing.stdout
    again = repxctl(home, "pull", "simulation", "--target", "remote", "--lab", lab)
    assert ": 0 files," in again.stdout

    unknown = repxctl(home, "pull", "simulation", "--target", "nowhere", "--lab", lab, code=2)
    assert unknown.stderr.strip() == ("repxctl: error: pull needs an SSH target (one with an address): "
                                      "pass --target NAME (SSH targets: remote)")
    ssh_host.cut_link()
    try:
        down = repxctl(home, "pull", "simulation", "--target", "remote", "--lab", lab, code=1)
    finally:
        ssh_host.restore_link()
    line = down.stderr.strip()
    assert "\n" not in line and line.startswith("repxctl: error: target 'remote': cannot reach repx-remote: ")
    assert line.endswith("(try again when the host is back)")
