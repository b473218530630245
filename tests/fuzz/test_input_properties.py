"""Property tests: the pw.x input parser and the worker-result validator answer any
input with a result or a clear validation error, never another exception."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from zpe_client.compute import ResultBody
from zpe_client.models import TaskResult, TaskSpec
from zpe_core.control.pull import validate_result
from zpe_core.errors import InputError
from zpe_core.jobs.models import Task
from zpe_core.physics.qe_input import parse_qe_input, select_mobile

pytestmark = pytest.mark.fuzz

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SAMPLE_TEXTS = [p.read_text() for p in sorted(SAMPLES.glob("*.in"))]
EXAMPLES = int(os.environ.get("ZPE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)

# Tokens that matter to the parser, so mutations reach deep into it.
PW_TOKENS = [
    "&SYSTEM",
    "&CONTROL",
    "&ELECTRONS",
    "/",
    "ibrav=0",
    "ibrav = 1",
    "nat=2",
    "ntyp=1",
    "ecutwfc=30",
    "celldm(1)=10.0",
    "A=5",
    "calculation='relax'",
    "ATOMIC_SPECIES",
    "ATOMIC_POSITIONS",
    "ATOMIC_POSITIONS {crystal}",
    "ATOMIC_POSITIONS bohr",
    "CELL_PARAMETERS",
    "CELL_PARAMETERS angstrom",
    "K_POINTS",
    "K_POINTS gamma",
    "K_POINTS automatic",
    "K_POINTS (automatic)",
    "K_POINTS tpiba",
    "H 1.008 H.pbe.UPF",
    "H 0.0 0.0 0.0",
    "H 0 0 0 0 0 0",
    "O 1 2 3 1 1 0",
    "4 4 4 1 1 1",
    "0 0 0",
    "1e999",
    "nan",
    "-inf",
    "1.0d0",
    "!",
    "#",
    ",",
    "=",
    "'",
    '"',
    "\n",
    "\t",
    " ",
    "\ufeff",
    "\x00",
    "\r\n",
    "9" * 30,
    "-1",
    "0",
    "nat=100000",
    "ntyp=0",
    "nspin=2",
    "assume_isolated='mt'",
]


def _parse_only_input_errors(text: str) -> None:
    try:
        parsed = parse_qe_input(text, max_bytes=64 * 1024)
    except InputError as exc:
        assert exc.code and exc.message  # a clear, coded message
        return
    # A parsed input must also survive the default mobile-atom selection.
    try:
        select_mobile(parsed, None, max_mobile=64)
    except InputError as exc:
        assert exc.code and exc.message


@FUZZ
@given(st.text(max_size=2000))
def test_arbitrary_text_gives_a_result_or_an_input_error(text: str) -> None:
    _parse_only_input_errors(text)


@FUZZ
@given(st.lists(st.sampled_from(PW_TOKENS), max_size=80).map(" ".join))
def test_token_soup_gives_a_result_or_an_input_error(text: str) -> None:
    _parse_only_input_errors(text)


@st.composite
def mutated_sample(draw: st.DrawFn) -> str:
    """A real sample with lines deleted, duplicated, replaced or spliced with tokens."""
    lines = draw(st.sampled_from(SAMPLE_TEXTS)).splitlines()
    for _ in range(draw(st.integers(1, 6))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "token", "truncate", "text"]))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "token":
            words = lines[i].split()
            j = draw(st.integers(0, len(words)))
            words.insert(j, draw(st.sampled_from(PW_TOKENS)))
            lines[i] = " ".join(words)
        elif op == "truncate":
            lines[i] = lines[i][: draw(st.integers(0, max(0, len(lines[i]) - 1)))]
        else:
            lines[i] = draw(st.text(max_size=40))
    return "\n".join(lines)


@FUZZ
@given(mutated_sample())
def test_mutated_samples_give_a_result_or_an_input_error(text: str) -> None:
    _parse_only_input_errors(text)


def test_the_samples_parse() -> None:
    assert len(SAMPLE_TEXTS) >= 5
    for text in SAMPLE_TEXTS:
        parse_qe_input(text)


# ---------------------------------------------------------------------- worker results


def _task(natoms: int) -> Task:
    spec = TaskSpec(
        symbols=["H"] * natoms,
        positions=[[0.0, 0.0, float(i)] for i in range(natoms)],
        cell=[[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]],
        pbc=[True, True, True],
        engine="mock",
        engine_version="mock-1",
    )
    return Task(task_id="t" + "0" * 63, spec=spec, subscribers=["j1"])


numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**20), 10**20)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)


@st.composite
def result_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """Result bodies: mostly well-formed, with wrong shapes, engines and non-finite numbers."""
    natoms = draw(st.integers(0, 4))
    row = st.lists(numbers, min_size=draw(st.sampled_from([3, 3, 3, 2, 4])), max_size=4)
    payload: dict[str, Any] = {
        "energy_ev": draw(numbers),
        "forces_ev_per_a": draw(st.lists(row, min_size=natoms, max_size=natoms)),
        "engine": draw(st.sampled_from(["mock", "qe", ""])),
        "engine_version": draw(st.sampled_from(["mock-1", "mock-2", "x" * 200])),
    }
    if draw(st.booleans()):
        payload["wall_seconds"] = draw(numbers)
    if draw(st.booleans()):
        payload[draw(st.sampled_from(["scf_iterations", "warm_started", "extra"]))] = draw(
            json_values
        )
    return payload


@FUZZ
@given(result_payloads(), st.integers(1, 3))
def test_result_validation_only_rejects_with_validation_errors(
    payload: dict[str, Any], natoms: int
) -> None:
    """The API's two gates: the request model, then ``validate_result`` against the task."""
    try:
        body = ResultBody.model_validate(payload)
    except ValidationError:
        return
    result = body.to_result()
    try:
        validate_result(_task(natoms), result)
    except InputError as exc:
        assert exc.code.startswith("result_")
        return
    # Accepted: it must really be a natoms x 3 block of finite numbers from the right engine.
    assert len(result.forces_ev_per_a) == natoms
    assert all(len(r) == 3 and all(math.isfinite(f) for f in r) for r in result.forces_ev_per_a)
    assert (result.engine, result.engine_version) == ("mock", "mock-1")


@FUZZ
@given(result_payloads(), st.integers(1, 3))
def test_validator_alone_never_crashes_on_a_task_result(
    payload: dict[str, Any], natoms: int
) -> None:
    """``validate_result`` on any ``TaskResult`` that pydantic accepts (no request-model gate)."""
    try:
        result = TaskResult.model_validate(payload)
    except ValidationError:
        return
    assume(isinstance(result.forces_ev_per_a, list))
    try:
        validate_result(_task(natoms), result)
    except InputError:
        return
    assert all(math.isfinite(f) for r in result.forces_ev_per_a for f in r)
