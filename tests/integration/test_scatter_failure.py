"""A scatter-gather stage whose branch fails stops its other branches: the stage has failed and
their results would not be used (on SLURM the same test checks their jobs are cancelled)."""

from __future__ import annotations

from pathlib import Path

from cli import repxctl
from definitions import HEADER

from repxd.lab.writer import WORK_ITEM, LabWriter, Step


def failing_branch_lab(root: Path) -> Path:
    """A scatter of two items: item 0's step fails at once, item 1's step would sleep 300 s."""
    writer = LabWriter()
    writer.run("stage").scatter_gather(
        "split",
        scatter=HEADER + 'echo \'[{"n":0},{"n":1}]\' > "$out/work_items.json"\n',
        steps={"work": Step(HEADER + 'item=$(get item "$inputs")\n'
                                     'if grep -q \'"n":0\' "$item"; then exit 4; fi\nsleep 300\n: > "$out/r"\n',
                            inputs={"item": WORK_ITEM}, outputs={"r": "$out/r"})},
        gather=HEADER + ': > "$out/all"\n', outputs={"all": "$out/all"})
    return writer.write(root / "failing-lab")


def test_a_failed_branch_stops_the_other_branches(tmp_path):
    lab = failing_branch_lab(tmp_path)
    result = repxctl("run", "stage", "--lab", lab, "--base-path", tmp_path / "base", "--json", timeout=120)
    assert result.code == 1, result.stderr
    (reason,) = result.json()["failed"].values()
    assert "exited with status 4" in reason and "1 other branch stopped" in reason
    outputs = tmp_path / "base" / "outputs"
    assert not list(outputs.glob("*/branch-1/step-work/repx/SUCCESS"))
    assert not list(outputs.glob("*/repx/SUCCESS"))
