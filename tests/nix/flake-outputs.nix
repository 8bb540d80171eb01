# The flake's outputs without fetching its inputs (Nix 2.8 cannot evaluate current nixpkgs):
# flake.nix's `outputs` is called with `self` and a `nixpkgs` input whose lib is the real one
# and whose legacyPackages are FAKES (callPackage returns a placeholder naming the file and the
# system). Only attribute names and the wiring between outputs are looked at, never a build.
{ lib }:
let
  flake = import ../../flake.nix;
  stub = import ./stub.nix {
    inherit lib;
    withRepx = false;
  };
  systems = [
    "x86_64-linux"
    "aarch64-linux"
  ];
  fakePkgs = system: {
    inherit lib;
    stdenv.hostPlatform.system = system;
    callPackage = path: _args: stub.fakeDrv "${baseNameOf path}-${system}" { };
  };
  nixpkgs = {
    inherit lib;
    legacyPackages = lib.genAttrs systems fakePkgs;
  };
  self = flake.outputs { inherit self nixpkgs; } // {
    outPath = toString ../..;
  };
  perSystem = lib.mapAttrs (_: lib.attrNames);

  # nixosModules.default on a host whose pkgs has no `repx` (no overlay): the package must be
  # this flake's.
  moduleOnly = lib.evalModules {
    modules = [
      stub.module
      self.nixosModules.default
      {
        _module.args.pkgs = lib.mkForce (
          stub.pkgs
          // {
            stdenv.hostPlatform.system = "aarch64-linux";
            # The host's own package set builds it: its nixpkgs, overlays and cross settings.
            callPackage = path: _args: stub.fakeDrv "${baseNameOf path}-built-by-the-host" { };
          }
        );
        services.repx.enable = true;
      }
    ];
  };
in
{
  inherit (flake) description;
  nixpkgsUrl = flake.inputs.nixpkgs.url;
  packages = perSystem self.packages;
  checks = perSystem self.checks;
  devShells = perSystem self.devShells;
  formatter = lib.attrNames self.formatter;
  nixosModules = lib.attrNames self.nixosModules;
  overlays = lib.attrNames self.overlays;
  overlayRepx = (self.overlays.default (fakePkgs "x86_64-linux") { }).repx.name;
  defaultPackage = self.packages.x86_64-linux.default.name;
  modulePackage = moduleOnly.config.services.repx.package.name;
  # A host that applied overlays.default (or has its own `repx`) gets that one.
  overlayHostPackage =
    (lib.evalModules {
      modules = [
        stub.module
        self.nixosModules.default
        {
          _module.args.pkgs = lib.mkForce (stub.pkgs // { repx = stub.fakeDrv "repx-from-the-overlay" { }; });
          services.repx.enable = true;
        }
      ];
    }).config.services.repx.package.name;
  moduleUnits = map (p: p.name) moduleOnly.config.systemd.packages;
}
