# NixOS VM tests (pkgs.testers.runNixOSTest). Each scenario file takes the shared pieces below;
# the Python scenarios are tests/system/scenarios.py, the same code the systemd-nspawn tier runs,
# and cluster-only helpers live in lib/; the scripts import both as the package `repx_scenarios`
# (lib/scenarios-package.nix), type-checked by the driver (no skipTypeCheck). A new scenario
# (SLURM, an SSH target) is one more file here and one more line in this set.
{
  pkgs,
  module,
  repx,
}:
let
  common = import ./lib/nodes.nix { inherit module labs; };
  labs = {
    simple = ../examples/labs/simple;
    naps = ../examples/labs/naps;
    sweep-scatter = ../examples/labs/sweep-scatter;
  };
  args = {
    inherit pkgs common labs repx;
    scenarios = import ./lib/scenarios-package.nix;
  };
in
{
  vm-single-node = import ./single-node.nix args;
  vm-cluster = import ./cluster.nix args;
  vm-slurm = import ./slurm.nix args;
  vm-ssh = import ./ssh.nix args;
}
