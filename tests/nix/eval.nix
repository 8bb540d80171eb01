# Evaluates nixos/module.nix with the real nixpkgs lib and module system against stub.nix, and
# reports what a test looks at. Usage (tests/nix/test_module.py does this):
#
#   nix-instantiate --eval --strict --json tests/nix/eval.nix \
#     --arg lib 'import <nixpkgs-lib>/lib' --arg configuration '{ services.repx.enable = true; }' \
#     -A report
{
  lib,
  configuration ? { },
  cross ? false,
}:
let
  stub = import ./stub.nix { inherit lib cross; };
  evaluated = lib.evalModules {
    modules = [
      stub.module
      ../../nixos/module.nix
      configuration
    ];
  };
  inherit (evaluated) config;
  repxUnits = lib.filterAttrs (name: _: lib.hasPrefix "repx" name);

  # The derivation-shaped fakes as JSON-friendly records.
  configSource = config.environment.etc."repx/repxd.toml".source or null;
  rawFile = if configSource ? fakeEnv then configSource.fakeEnv.raw else configSource;
in
{
  inherit evaluated;

  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  inherit (config) warnings;

  report = {
    failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
    inherit (config) warnings;
    settings = rawFile.fakeValue or null;
    configFile = {
      name = configSource.name or null;
      checkScript = configSource.fakeScript or null;
      checkedWith = map (p: p.name) (configSource.fakeEnv.nativeBuildInputs or [ ]);
    };
    services = lib.mapAttrs (_: s: {
      inherit (s) enable wantedBy after wants serviceConfig;
      path = map (p: p.name) s.path;
      restartTriggers = map (t: t.name or (toString t)) s.restartTriggers;
    }) (repxUnits config.systemd.services);
    targets = lib.mapAttrs (_: t: { inherit (t) wantedBy; }) (repxUnits config.systemd.targets);
    slices = lib.mapAttrs (_: s: { inherit (s) sliceConfig; }) (repxUnits config.systemd.slices);
    packages = map (p: p.name) config.systemd.packages;
    systemPackages = map (p: p.name) config.environment.systemPackages;
    users = lib.mapAttrs (_: u: removeAttrs u [ "_module" ]) config.users.users;
    groups = lib.attrNames config.users.groups;
    groupIds = lib.mapAttrs (_: g: g.gid or null) config.users.groups;
    firewallPorts = config.networking.firewall.allowedTCPPorts;
    tmpfiles = config.systemd.tmpfiles.rules;
    inherit (config.environment) variables;
    polkit = {
      inherit (config.security.polkit) enable extraConfig;
    };
    scrapeConfigs = config.services.repx.metrics.scrapeConfigs;
    prometheusScrapeConfigs = config.services.prometheus.scrapeConfigs;
    # NixOS puts every module's meta.doc into its manual: there must be none (see module.nix).
    docs = if evaluated.options.meta.doc.isDefined then map toString config.meta.doc else [ ];
    polkitRules =
      let
        rules = config.environment.etc."polkit-1/rules.d/60-repx.rules".source or null;
      in
      if rules == null || builtins.isString rules then rules else { inherit (rules) name fakeScript; };
  };
}
