"""Fixtures of the data tests: a tiny synthetic data set (made once per session) and CLI helpers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ctmtl.cli import main
from ctmtl.data.synthetic import SynthConfig, generate_synthetic

#: small enough to generate in about a second, big enough that every source has every split
TINY = SynthConfig(size=48, slices=8, thickness=8.0, medseg_volumes=4, medseg_tr_patients=3, medseg_tr_slices=2,
                   medseg_val_slices=2, lung_dx_patients=5, ucsd_covid=12, ucsd_noncovid=12)


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """A tiny synthetic data set (seed 7); read-only for tests: copy what you modify (:func:`copy_source`)."""
    out = tmp_path_factory.mktemp("synth") / "tiny"
    generate_synthetic(out, seed=7, config=TINY)
    return out


@pytest.fixture(scope="session")
def tiny_record(tiny_synth) -> dict:
    return json.loads((tiny_synth / "synth.json").read_text())


@pytest.fixture
def copy_source(tiny_synth, tmp_path):
    """Copy one source folder of the tiny data set into ``tmp_path`` (for tests that break files)."""

    def _copy(folder: str) -> Path:
        dst = tmp_path / folder
        shutil.copytree(tiny_synth / folder, dst)
        return dst

    return _copy


def run_cli(capsys, *argv) -> tuple[int, str, list[str]]:
    """Run ``ctmtl`` in-process; return (exit code, stdout, stderr lines)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, [line for line in err.splitlines() if line.strip()]


def assert_fails(capsys, argv, *needles: str) -> list[str]:
    """The command exits non-zero; every stderr line is one 'error:' line (no traceback); each needle is named
    on some error line. Returns the error lines."""
    rc, out, err = run_cli(capsys, *argv)
    assert rc != 0, f"expected failure, got rc {rc}; stdout: {out}"
    assert "Traceback" not in out + "\n".join(err)
    errors = [line for line in err if ": error: " in line]
    assert errors, f"no error line on stderr: {err}"
    assert all(line.startswith("ctmtl manifest: ") for line in err), err
    for needle in needles:
        assert any(needle in line for line in errors), f"{needle!r} not named in: {errors}"
    return errors
