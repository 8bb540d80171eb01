"""The options reference in README.md is the module's own (regenerate with
`NIXPKGS_LIB=... python tests/nix/options_doc.py`), and every option is documented."""

from __future__ import annotations

from nixeval import HERE, evaluate
from options_doc import DOC, current_block, render


def test_every_option_has_a_description():
    options = evaluate(HERE / "options.nix")
    names = {o["name"] for o in options}
    assert {"services.repx.enable", "services.repx.gpu.backend", "services.repx.metrics.port",
            "services.repx.settings.api.tcp", "services.repx.jobs.defaultLimits.mem"} <= names
    undocumented = [o["name"] for o in options if len((o["description"] or "").strip()) < 10]
    assert not undocumented, f"options without a description: {undocumented}"


def test_the_reference_in_docs_is_current():
    generated = render(evaluate(HERE / "options.nix"))
    assert current_block(DOC.read_text()) == generated, (
        "README.md's options reference differs from the module; run "
        "`NIXPKGS_LIB=... python tests/nix/options_doc.py`")
