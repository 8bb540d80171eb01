"""repxctl init (a new experiment project) and repxctl completions (shell completion scripts)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import click
from click.shell_completion import get_completion_class

from repxd.errors import RepxError

# A project that builds a one-run Lab with the upstream RepX Nix library: one stage with a
# parameter, so `nix build && repxctl run @all` works and shows where to add more.
SKELETON = {
    "flake.nix": """\
{
  description = "@NAME@: experiments run with RepX";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
    repx.url = "github:repx-org/repx";
  };

  outputs = { self, nixpkgs, repx, ... }:
    let
      system = "x86_64-linux";
      pkgs = import nixpkgs { inherit system; overlays = [ repx.overlays.default ]; };
      built = import ./nix/lab.nix {
        inherit pkgs;
        repx-lib = repx.lib;
        gitHash = self.rev or self.dirtyRev or "unknown";
      };
    in {
      packages.${system}.default = built.lab;
      devShells.${system}.default = pkgs.mkShell { buildInputs = [ pkgs.repx ]; };
    };
}
""",
    "nix/lab.nix": """\
# The Lab: its runs (each a set of pipelines over a parameter grid).
{ pkgs, repx-lib, gitHash }:
repx-lib.mkLab {
  inherit pkgs gitHash repx-lib;
  lab_version = "0.1.0";
  runs.experiment = repx-lib.callRun ./run.nix [ ];
}
""",
    "nix/run.nix": """\
# One run: which pipelines, and the parameters their jobs are expanded over.
_: {
  name = "experiment";
  pipelines = [ ./pipeline.nix ];
  parameters.greeting = [ "hello" "bonjour" ];
}
""",
    "nix/pipeline.nix": """\
# Stages in order; later stages may take earlier stages' outputs as inputs.
{ repx }:
repx.mkPipe {
  greet = repx.callStage ./stage-greet.nix [ ];
}
""",
    "nix/stage-greet.nix": """\
# A stage: its parameters, its outputs (paths under $out) and the script that makes them.
_: {
  pname = "greet";
  params.greeting = "hello";
  outputs."message.txt" = "$out/message.txt";
  run = { outputs, params, ... }: ''
    echo "${params.greeting} from @NAME@" > "${outputs."message.txt"}"
  '';
}
""",
    ".gitignore": "result\nresult-*\n",
}


@click.command()
@click.argument("path", type=click.Path(path_type=Path), default=".")
@click.option("--name", help="Project name (default: the directory's name).")
def init(path: Path, name: str | None) -> None:
    """Create a new experiment project in PATH: a flake and a one-stage Lab to build with `nix build`."""
    name = name or path.resolve().name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise RepxError(f"project name {name!r} is not usable in Nix; use letters, digits, '.', '_' and '-' (--name NAME)")
    existing = [rel for rel in SKELETON if (path / rel).exists()]
    if existing:
        raise RepxError(f"{path / existing[0]} already exists; init writes only into a new or empty project")
    try:
        for rel, text in SKELETON.items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_text(text.replace("@NAME@", name))
    except OSError as exc:
        raise RepxError(f"cannot write {exc.filename}: {exc.strerror}") from None
    # Flakes only see files git tracks: make PATH a repository unless it is inside one already.
    if shutil.which("git"):
        inside = subprocess.run(["git", "-C", str(path), "rev-parse", "--is-inside-work-tree"], capture_output=True)
        if inside.returncode != 0:
            subprocess.run(["git", "init", "-q", str(path)], capture_output=True)
        subprocess.run(["git", "-C", str(path), "add", *SKELETON], capture_output=True)
    click.echo(f"Created project {name!r} in {path}. Next: cd {path} && nix build && repxctl run @all")


@click.command()
@click.option("--shell", required=True, type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completions(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL, e.g. `repxctl completions --shell bash > ~/.local/share/bash-completion/completions/repxctl`."""
    completion = get_completion_class(shell)(ctx.find_root().command, {}, "repxctl", "_REPXCTL_COMPLETE")
    click.echo(completion.source())
