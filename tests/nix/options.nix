# The visible services.repx options as data, for the options reference in README.md
# (tests/nix/options_doc.py renders it; test_options_doc.py checks the file is current).
{ lib }:
let
  inherit ((import ./eval.nix { inherit lib; }).evaluated) options;
  visible = o: o.visible && !o.internal && lib.hasPrefix "services.repx." o.name;
in
map (o: {
  inherit (o) name type description readOnly;
  default = o.default.text or null;
  example = o.example.text or null;
}) (lib.filter visible (lib.optionAttrSetToDocList options))
