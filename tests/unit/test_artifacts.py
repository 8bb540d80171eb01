"""Placing a Lab under artifacts/: a file another Lab left under the same name is not trusted."""

from __future__ import annotations

from repxd.exec.artifacts import sync_artifacts
from repxd.exec.layout import OutputLayout
from repxd.lab.loader import load_lab
from repxd.lab.writer import LabWriter


def _lab(where):
    writer = LabWriter()
    writer.run("r").job("j", '#!/bin/sh\necho genuine > "$1/said"\n', outputs={"said": "$out/said"})
    return writer.write(where)


def test_a_file_placed_under_the_same_name_by_another_lab_is_replaced(tmp_path):
    lab = load_lab(_lab(tmp_path / "lab"))
    layout = OutputLayout(tmp_path / "base")
    (script,) = [e.path for e in lab.manifest.files if e.path.endswith("/bin/j")]
    poisoned = layout.artifacts / script
    poisoned.parent.mkdir(parents=True)
    poisoned.write_text("#!/bin/sh\necho POISONED\n")
    sync_artifacts(lab, layout)
    assert poisoned.read_bytes() == (lab.root / script).read_bytes()


def test_a_file_with_the_same_bytes_is_kept(tmp_path):
    lab = load_lab(_lab(tmp_path / "lab"))
    layout = OutputLayout(tmp_path / "base")
    (script,) = [e.path for e in lab.manifest.files if e.path.endswith("/bin/j")]
    earlier = layout.artifacts / script
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes((lab.root / script).read_bytes())
    inode = earlier.stat().st_ino
    sync_artifacts(lab, layout)
    assert earlier.stat().st_ino == inode  # not rewritten: jobs reading it meanwhile see no change
