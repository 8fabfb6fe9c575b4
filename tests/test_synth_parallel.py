"""Parallel rendering writes the same bytes as the serial render (models depend on the pixels)."""

from __future__ import annotations

from pathlib import Path

from lumbarclip.synth.cohort import CohortConfig, make_cohort


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_workers_write_the_serial_bytes(tmp_path: Path) -> None:
    config = CohortConfig(n_patients=9, seed=3, size=32)
    make_cohort(tmp_path / "serial", config, progress=False, workers=1)
    make_cohort(tmp_path / "parallel", config, progress=False, workers=2)
    serial, parallel = _files(tmp_path / "serial"), _files(tmp_path / "parallel")
    assert len(serial) == 9 * 6 + 2  # six images a patient, manifest.csv, findings.jsonl
    assert serial.keys() == parallel.keys()
    assert [k for k in serial if serial[k] != parallel[k]] == []
    # patient order is kept: the manifest lists patients 0001..0009 in turn
    manifest = (tmp_path / "parallel" / "manifest.csv").read_text().splitlines()[1:]
    ids = [line.split(",")[1] for line in manifest]
    assert ids == sorted(ids)
