{
  description = "repx: reproducible experiments (RepX Labs) as a system service";

  # Written and evaluated against nixos-unstable of June 2026 (lib version 26.11, the lib in
  # ../shared/nixpkgs-lib that tests/nix uses). No flake.lock ships: see README "NixOS".
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});

      # services.repx with its package built from the host's own package set (its nixpkgs, its
      # overlays, its cross settings), so that importing the module is enough; a host that
      # applies overlays.default gets that `repx`.
      nixosModule =
        { lib, pkgs, ... }:
        {
          imports = [ ./nixos/module.nix ];
          services.repx.package = lib.mkDefault (pkgs.repx or (pkgs.callPackage ./nixos/package.nix { }));
        };
    in
    {
      packages = forAllSystems (
        _system: pkgs: rec {
          repx = pkgs.callPackage ./nixos/package.nix { };
          default = repx;
        }
      );

      overlays.default = final: _prev: {
        repx = final.callPackage ./nixos/package.nix { };
      };

      nixosModules = {
        repx = nixosModule;
        default = nixosModule;
      };

      checks = forAllSystems (
        system: pkgs:
        {
          package = self.packages.${system}.repx;
          module-eval = import ./nixos-tests/module-eval.nix {
            inherit pkgs;
            module = nixosModule;
          };
        }
        // import ./nixos-tests {
          inherit pkgs;
          module = nixosModule;
          inherit (self.packages.${system}) repx;
        }
      );

      devShells = forAllSystems (
        system: pkgs: {
          default = pkgs.mkShell {
            inputsFrom = [ self.packages.${system}.repx ];
            packages = [
              (pkgs.python3.withPackages (ps: [
                ps.pytest
                ps.hypothesis
                ps.pandas
              ]))
              pkgs.ruff
              pkgs.nixfmt
              pkgs.bubblewrap
              pkgs.graphviz
            ];
          };
        }
      );

      formatter = forAllSystems (_system: pkgs: pkgs.nixfmt);
    };
}
