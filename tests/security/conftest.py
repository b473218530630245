"""Shared pieces of the adversarial suite: an H2 input to mutate and a fake pw.x."""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import make_settings
from zpe_api.main import create_app

H2 = """\
&CONTROL
  calculation = 'scf'
{control}/
&SYSTEM
  ibrav = 0, nat = 2, ntyp = 1
  ecutwfc = 25.0, ecutrho = 200.0
{system}/
&ELECTRONS
  conv_thr = 1.0d-8
{electrons}/
ATOMIC_SPECIES
  H  1.00794  {pseudo}
CELL_PARAMETERS angstrom
  6.0 0.0 0.0
  0.0 6.0 0.0
  0.0 0.0 6.0
ATOMIC_POSITIONS angstrom
  H  3.0 3.0 2.625
  H  3.0 3.0 3.375
K_POINTS gamma
"""


def h2_input(
    *, control: str = "", system: str = "", electrons: str = "", pseudo: str = "H.pbe-kjpaw.UPF"
) -> str:
    """An H2 input with extra lines in its namelists."""
    return H2.format(control=control, system=system, electrons=electrons, pseudo=pseudo)


def fake_pw(directory: Path, body: str) -> str:
    """A shell script standing in for pw.x; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "fake-pw.x"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(script)


def namelist_text(pw_input: str) -> str:
    """The namelist part of a written pw.x input (everything before the first card)."""
    match = re.search(r"^ATOMIC_SPECIES", pw_input, re.MULTILINE)
    assert match is not None, pw_input
    return pw_input[: match.start()]


@pytest.fixture
def client() -> Iterator[TestClient]:
    """The API on a memory store with the mock engine and thread workers."""
    with TestClient(create_app(make_settings())) as test_client:
        yield test_client
