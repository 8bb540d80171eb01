# Types and helpers shared by the parts of the services.repx module.
{ lib }:
let
  inherit (lib) types;

  match = builtins.match "(.*):([1-9][0-9]{0,4})";
in
rec {
  # "host:port" as repxd parses it (the last colon separates the port), port 1-65535.
  listenerType =
    types.addCheck types.str (
      s:
      let
        m = match s;
      in
      m != null && lib.elemAt m 0 != "" && lib.toInt (lib.elemAt m 1) <= 65535
    )
    // {
      description = ''TCP listener "host:port" with a port from 1 to 65535'';
    };

  splitListener =
    s:
    let
      m = match s;
    in
    {
      host = lib.elemAt m 0;
      port = lib.toInt (lib.elemAt m 1);
    };

  isLoopback =
    host:
    builtins.elem host [
      "localhost"
      "::1"
      "[::1]"
    ]
    || lib.hasPrefix "127." host;

  isWildcard =
    host:
    builtins.elem host [
      "0.0.0.0"
      "::"
      "[::]"
      "*"
    ];

  # A host as it appears in a URL or a Prometheus target: IPv6 literals in brackets.
  urlHost = host: if lib.hasInfix ":" host && !lib.hasPrefix "[" host then "[${host}]" else host;

  # Secrets are read at runtime from outside the store; a path literal or a store path would
  # copy the secret into the world-readable /nix/store.
  secretPathType =
    types.addCheck types.str (p: lib.hasPrefix "/" p && !lib.hasPrefix "${builtins.storeDir}/" p)
    // {
      description = "absolute path outside the Nix store (a string, not a path literal)";
    };

  # Sizes and times as repxd's resources.toml reads them.
  memoryType = types.strMatching "[0-9]+([.][0-9]+)?[KMGTkmgt]?(i?[Bb])?" // {
    description = ''memory size such as "512M" or "4G"'';
  };
  timeType = types.strMatching "([0-9]+-)?([0-9]+:)?[0-9]+:[0-9]+" // {
    description = ''time limit "HH:MM:SS" or "D-HH:MM:SS"'';
  };

  # null values are "unset": TOML has no null, and repxd then applies its own default.
  dropNulls =
    v:
    if builtins.isAttrs v && !lib.isDerivation v then
      lib.mapAttrs (_: dropNulls) (lib.filterAttrs (_: x: x != null) v)
    else if builtins.isList v then
      map dropNulls v
    else
      v;

  # An ExecStart= argument: quoted for systemd, with its specifiers and variables escaped.
  systemdArg = a: lib.escapeShellArg (builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] a);
}
