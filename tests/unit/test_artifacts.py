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


def _two_job_lab(where):
    writer = LabWriter()
    run = writer.run("r")
    first = run.job("first", '#!/bin/sh\n: > "$1/a"\n', outputs={"a": "$out/a"})
    run.job("second", '#!/bin/sh\n: > "$1/b"\n', inputs={"a": first.output("a")}, outputs={"b": "$out/b"})
    return writer.write(where)


def _placed(layout):
    return sorted(str(p.relative_to(layout.artifacts)) for p in layout.artifacts.rglob("*")
                  if p.is_file() and ".repx-labs" not in p.parts)


def test_a_selection_places_its_own_jobs_and_the_rest_of_the_lab(tmp_path):
    lab = load_lab(_two_job_lab(tmp_path / "lab"))
    (first,) = [j for j in lab.jobs if "-first-" in j]
    (second,) = [j for j in lab.jobs if "-second-" in j]
    layout = OutputLayout(tmp_path / "base")
    sync_artifacts(lab, layout, [first])
    placed = _placed(layout)
    everything = sorted(str(p.relative_to(lab.root)) for p in lab.root.rglob("*") if p.is_file())
    assert placed == [f for f in everything if not f.startswith(f"jobs/{second}/")]
    assert any(f.startswith(f"jobs/{first}/bin/") for f in placed)

    # A later run of the whole Lab places what is missing; the Lab then counts as synced.
    sync_artifacts(lab, layout)
    assert _placed(layout) == everything
    assert sync_artifacts(lab, layout, [second]) == 0


def test_a_selection_still_replaces_a_file_another_lab_left(tmp_path):
    lab = load_lab(_two_job_lab(tmp_path / "lab"))
    (first,) = [j for j in lab.jobs if "-first-" in j]
    layout = OutputLayout(tmp_path / "base")
    (script,) = [e.path for e in lab.manifest.files if e.path.startswith(f"jobs/{first}/bin/")]
    poisoned = layout.artifacts / script
    poisoned.parent.mkdir(parents=True)
    poisoned.write_text("#!/bin/sh\necho POISONED\n")
    sync_artifacts(lab, layout, [first])
    assert poisoned.read_bytes() == (lab.root / script).read_bytes()
