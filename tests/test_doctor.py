"""`avatar doctor` reports versions and which raster backends work, and survives those that do not."""
from __future__ import annotations


from avatar.render import has_cpu_kernels
from avatar_apps import doctor
from avatar_apps.cli import main


def test_doctor_lists_versions_and_backends(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "torch " in out and "warp " in out
    lines = {tuple(line.split()[:3]): line for line in out.splitlines() if " on " in line}
    assert "ok" in lines[("torch", "on", "cpu")]
    if has_cpu_kernels():
        assert "ok" in lines[("cpu", "on", "cpu")]


def test_a_broken_backend_is_reported_not_raised(monkeypatch):
    monkeypatch.setattr(doctor, "BACKENDS", {"no-such-backend": ("cpu",), "torch": ("cpu",)})
    got = {b["backend"]: b for b in doctor.probe_backends()}
    assert not got["no-such-backend"]["ok"] and "no-such-backend" in got["no-such-backend"]["note"]
    assert got["torch"]["ok"]
    text = "\n".join(doctor.report_lines({"torch": "x"}, list(got.values())))
    assert "FAIL" in text and "no-such-backend" in text
