# The scenarios as a Python package for the test driver (`extraPythonPackages = p: [ (scenarios p) ]`):
# the scripts import it like any module, and because it is typed (py.typed) the driver's mypy
# run checks each script's calls into it against their signatures.
python3Packages:
let
  modules = import ./scenario-modules.nix;
  copy = name: source: "cp ${source} $package/${name}.py\n";
in
python3Packages.buildPythonPackage {
  pname = "repx-scenarios";
  version = "0";
  pyproject = false;
  dontUnpack = true;
  dontBuild = true;
  installPhase = ''
    runHook preInstall
    package=$out/${python3Packages.python.sitePackages}/repx_scenarios
    mkdir -p $package
    touch $package/__init__.py $package/py.typed
    ${builtins.concatStringsSep "" (builtins.attrValues (builtins.mapAttrs copy modules))}
    runHook postInstall
  '';
  pythonImportsCheck = map (name: "repx_scenarios.${name}") (builtins.attrNames modules);
}
