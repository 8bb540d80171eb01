# The NixOS test driver's package, as far as the typed stub needs it: see machine/__init__.pyi.
