# What the module tests evaluate services.repx against, short of a whole nixpkgs:
#
# - `module`: declarations of the NixOS options services.repx sets or reads, with types loose
#   enough to accept anything NixOS would, but merging like NixOS where it matters (unit
#   settings: lists concatenate, single values must agree; lines concatenate).
# - `pkgs`: a FAKE package set. `formats.toml` and `runCommandLocal` return derivation-shaped
#   attribute sets that record what they were given (`fakeValue`, `fakeEnv`, `fakeScript`)
#   instead of building anything; `repx` is a placeholder package.
#
# lib, the module system, the module's types, assertions and merging are the real ones.
{
  lib,
  withRepx ? true,
  cross ? false,
}:
let
  inherit (lib) mkOption types;

  fakeDrv =
    name: attrs:
    attrs
    // {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" name)}-${name}";
      drvPath = "/nix/store/fake-${name}.drv";
    };

  tomlValue =
    let
      base = types.oneOf [
        types.bool
        types.int
        types.float
        types.str
        types.path
        (types.attrsOf tomlValue)
        (types.listOf tomlValue)
      ];
    in
    base // { description = "TOML value"; };

  pkgs = {
    stdenv.hostPlatform.system = if cross then "aarch64-linux" else "x86_64-linux";
    stdenv.buildPlatform = {
      system = "x86_64-linux";
      canExecute = _host: !cross;
    };
    formats.toml = _: {
      type = types.attrsOf tomlValue;
      generate = name: value: fakeDrv name { fakeValue = value; };
    };
    runCommandLocal =
      name: env: script:
      fakeDrv name {
        fakeEnv = env;
        fakeScript = script;
      };
  }
  # Programs the roles run by name (their names are what a test checks).
  // lib.genAttrs [ "bubblewrap" "podman" "docker" ] (name: fakeDrv name { pname = name; })
  // lib.optionalAttrs withRepx {
    repx = fakeDrv "repx-0.1.0" {
      pname = "repx";
      meta.mainProgram = "repxctl";
    };
  };

  option = type: default: mkOption { inherit type default; };
  strList = option (types.listOf types.str) [ ];

  # Unit settings merge as in NixOS's systemd-unit-options.nix: a list anywhere makes the
  # definitions concatenate; otherwise they must all be equal.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      if lib.any (d: builtins.isList d.value) defs then
        lib.concatMap (d: lib.toList d.value) defs
      else
        lib.mergeEqualOption loc defs;
  };
  unitSettings = option (types.attrsOf unitOption) { };

  unit = extra: types.submodule {
    options = {
      enable = option types.bool true;
      wantedBy = strList;
      wants = strList;
      after = strList;
      requires = strList;
      before = strList;
      restartTriggers = option (types.listOf types.unspecified) [ ];
      unitConfig = unitSettings;
      environment = option (types.attrsOf types.str) { };
      path = option (types.listOf types.package) [ ];
    } // extra;
  };

  docFile = types.path // { merge = _loc: defs: map (d: d.value) defs; };

  module = {
    options = {
      assertions = option (types.listOf types.unspecified) [ ];
      warnings = strList;

      meta = {
        maintainers = option (types.listOf types.unspecified) [ ];
        doc = mkOption { type = docFile; };
      };

      systemd = {
        packages = option (types.listOf types.package) [ ];
        services = option (types.attrsOf (unit { serviceConfig = unitSettings; })) { };
        targets = option (types.attrsOf (unit { })) { };
        slices = option (types.attrsOf (unit { sliceConfig = unitSettings; })) { };
        tmpfiles.rules = strList;
      };

      # NixOS's table of static ids (nixos/modules/misc/ids.nix, internal, attrsOf int); a test
      # sets the entries it needs, as that file sets them all.
      ids = {
        uids = option (types.attrsOf types.int) { };
        gids = option (types.attrsOf types.int) { };
      };

      users = {
        users = option (types.attrsOf (types.submodule { freeformType = types.attrsOf types.unspecified; })) { };
        groups = option (types.attrsOf (types.attrsOf types.unspecified)) { };
      };

      networking = {
        hostName = option types.str "nixos";
        firewall.allowedTCPPorts = option (types.listOf types.port) [ ];
      };

      environment = {
        etc = option (types.attrsOf (types.submodule {
          options.source = mkOption { type = types.unspecified; };
        })) { };
        systemPackages = option (types.listOf types.package) [ ];
        variables = option (types.attrsOf types.str) { };
      };

      security.polkit = {
        enable = option types.bool false;
        extraConfig = option types.lines "";
      };

      # In NixOS `hardware.nvidia.enabled` is read-only and derived from the driver settings;
      # here a test sets it directly.
      hardware.nvidia.enabled = option types.bool false;
      services.xserver.videoDrivers = strList;

      services.prometheus = {
        enable = option types.bool false;
        scrapeConfigs = option (types.listOf (types.attrsOf types.unspecified)) [ ];
      };
    };

    config._module.args.pkgs = pkgs;
  };
in
{
  inherit module pkgs fakeDrv;
}
