"""A submit of a Lab planned before reuses the plan (jobs, dependencies, resources) but looks up
on every submit which jobs are done already; a plan is the same as one made afresh."""

from __future__ import annotations

from lab_factory import build_lab

from repxd.exec.layout import SUCCESS, OutputLayout
from repxd.service import submit
from repxd.service.daemon_config import Settings


def settings_for(tmp_path, resources: dict | None = None) -> Settings:
    return Settings.model_validate({"state_dir": str(tmp_path / "state"),
                                    "targets": {"local": {"base_path": str(tmp_path / "base")}},
                                    "resources": resources or {}})


def planned(settings: Settings, lab, selection: list[str]) -> list[tuple]:
    _run, jobs = submit.plan_submission(settings, str(lab), selection, None, {}, 1000, "someone")
    return [(j.job_id, j.deps, j.cpus, j.mem, j.done, j.gpus, j.gpu_optional) for j in jobs]


def mark_succeeded(tmp_path, job_id: str) -> None:
    repx = OutputLayout(tmp_path / "base").repx_dir(job_id)
    repx.mkdir(parents=True)
    (repx / SUCCESS).touch()


def test_a_job_done_since_the_last_submit_is_planned_as_done(tmp_path):
    lab = build_lab(tmp_path / "lab")
    settings = settings_for(tmp_path)
    first = planned(settings, lab, ["simulation"])
    assert [job[4] for job in first] == [False, False, False]
    mark_succeeded(tmp_path, first[0][0])
    again = planned(settings, lab, ["simulation"])
    assert [job[4] for job in again] == [True, False, False]
    assert [job[:4] for job in again] == [job[:4] for job in first]


def test_a_cached_plan_is_the_plan_made_afresh(tmp_path, monkeypatch):
    lab = build_lab(tmp_path / "lab")
    settings = settings_for(tmp_path)
    for selection in (["simulation"], ["analysis"], ["@all"], ["sweep"]):
        planned(settings, lab, selection)
        cached = planned(settings, lab, selection)
        monkeypatch.setattr(submit, "_lab_cache", type(submit._lab_cache)())  # nothing kept: planned from scratch
        assert cached == planned(settings, lab, selection), selection


def test_other_resource_rules_plan_again(tmp_path):
    """The daemon's resources are part of a plan: settings with other rules get their own."""
    lab = build_lab(tmp_path / "lab")
    plain = planned(settings_for(tmp_path), lab, ["simulation"])
    ruled = planned(settings_for(tmp_path, {"rules": [{"job_id_glob": "*", "mem": "1G"}]}), lab, ["simulation"])
    assert {job[3] for job in ruled} == {1 << 30}
    assert {job[3] for job in plain} != {1 << 30}
