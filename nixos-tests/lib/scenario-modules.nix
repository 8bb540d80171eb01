# The modules of the `repx_scenarios` Python package that the VM test scripts import, by module
# name: the operator scenarios shared with the systemd-nspawn tier, and the VM-only helpers.
# tests/typecheck reads this file to type-check exactly what the package holds.
{
  scenarios = ../../tests/system/scenarios.py;
  cluster = ./cluster.py;
  prometheus = ./prometheus.py;
}
