# The repx Python package (repxd and repxctl), with the systemd units of repxd/systemd installed
# under lib/systemd/system and the Grafana dashboard under share/grafana/dashboards.
{
  lib,
  python3Packages,
  writableTmpDirAsHomeHook,
}:
let
  root = ../.;
  pyproject = lib.importTOML ../pyproject.toml;
in
python3Packages.buildPythonApplication {
  pname = "repx";
  inherit (pyproject.project) version;
  pyproject = true;

  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../README.md
      ../repxd
      ../repxctl
      ../tests
      ../examples
      ./grafana-dashboard.json
    ];
  };

  build-system = [ python3Packages.hatchling ];

  # pyproject.toml's dependencies; dbus-next talks to systemd for the transient-unit launcher.
  # systemd-python (the `systemd` extra): libsystemd's journald, sd_notify and journal.Reader;
  # named systemd-python in newer nixpkgs, `systemd` in older ones.
  dependencies = with python3Packages; [
    pydantic
    msgspec
    click
    aiohttp
    httpx
    prometheus-client
    dbus-next
    (python3Packages.systemd-python or python3Packages.systemd)
  ];

  postInstall = ''
    for unit in repxd/systemd/*.service repxd/systemd/*.target repxd/systemd/*.slice; do
      install -Dm644 "$unit" "$out/lib/systemd/system/$(basename "$unit")"
    done
    substituteInPlace "$out"/lib/systemd/system/*.service --replace-fail "@REPXD@" "$out/bin/repxd"
    if grep -r "@REPXD@" "$out/lib/systemd/system"; then
      echo "a unit still has the @REPXD@ placeholder" >&2
      exit 1
    fi
    install -Dm644 repxd/systemd/repx.sysusers "$out/lib/sysusers.d/repx.conf"
    install -Dm644 repxd/systemd/repx.tmpfiles "$out/lib/tmpfiles.d/repx.conf"
    # Not under share/polkit-1, which NixOS links into the active rules for every installed
    # package: the module installs the rule itself, edited for a custom service user.
    install -Dm644 repxd/systemd/repx.polkit.rules "$out/share/repx/polkit/60-repx.rules"
    install -Dm644 nixos/grafana-dashboard.json "$out/share/grafana/dashboards/repx.json"
  '';

  nativeCheckInputs = [
    python3Packages.pytestCheckHook
    python3Packages.hypothesis
    python3Packages.pandas
    writableTmpDirAsHomeHook
  ];
  # The unit tier: pure Python. The integration and system tiers need real programs and
  # privileges a build sandbox does not have; the lint test needs ruff at the repo's version.
  enabledTestPaths = [ "tests/unit" ];
  disabledTestPaths = [ "tests/unit/test_lint.py" ];
  pythonImportsCheck = [
    "repxd"
    "repxctl"
  ];

  meta = {
    description = "Reproducible experiments as a system service: runs RepX Labs locally, on SLURM and over SSH";
    homepage = "https://github.com/repx-org/repx";
    license = lib.licenses.mit;
    mainProgram = "repxctl";
    platforms = lib.platforms.linux;
  };
}
