"""The ``qe`` engine: one pw.x SCF with forces, through ASE's Espresso calculator.

ASE writes the input and reads the output. Running pw.x is done by our own
profile (a subclass of ``EspressoProfile``) because ASE's ``check_call`` has no
timeout, inherits the environment unchanged and gives no way to classify
failures. Failures become ``EngineError`` with a stable code, a ``retryable``
flag and the tail of pw.x's output.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.espresso import Espresso, EspressoProfile

from zpe_core.engines.base import Engine
from zpe_core.errors import EngineError
from zpe_core.models import TaskResult, TaskSpec

TAIL_LINES = 40
VERSION_PROBE_TIMEOUT = 60.0
_KILL_GRACE_SECONDS = 5.0

_BANNER_RE = re.compile(r"Program PWSCF\s+v\.(\S+)")
_SCF_DONE_RE = re.compile(r"convergence has been achieved in\s+(\d+)\s+iterations")
_ERROR_RE = re.compile(r"Error in routine\s+(\S+)\s*\((-?\d+)\):\s*\n\s*(.*)")
# pw.x errors in these routines are file-system trouble on the worker, not bad input.
_IO_ROUTINES = frozenset({"davcio", "diropn", "seqopn", "cdiaghg_io", "pw_writefile"})
_MISSING_EXECUTABLE = (
    "unable to find the specified executable",
    "was unable to launch the specified application",
)

# Namelist keys the engine owns: geometry comes from the task, files go to the task's workdir.
_ENGINE_KEYS = {
    "control": {"outdir", "prefix", "pseudo_dir", "wfcdir", "calculation", "tprnfor", "disk_io"},
    "system": {"nat", "ntyp", "ibrav", "a", "b", "c", "cosab", "cosac", "cosbc"},
}

_version_cache: dict[str, str] = {}
_version_lock = threading.Lock()


def subprocess_env() -> dict[str, str]:
    """The environment pw.x runs with: one OpenMP thread, and Open MPI allowed as root."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return env


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def detect_pw_version(pw_command: str, timeout: float = VERSION_PROBE_TIMEOUT) -> str | None:
    """Run pw.x on an empty input and read the version from its banner (``"6.7MaX"``)."""
    try:
        argv = shlex.split(pw_command)
    except ValueError:
        return None
    if not argv:
        return None
    with tempfile.TemporaryDirectory(prefix="zpe-pwver-") as tmp:
        try:
            # pw.x prints its banner, then fails to read a namelist: no calculation runs.
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                cwd=tmp,
                env=subprocess_env(),
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
    match = _BANNER_RE.search(proc.stdout)
    return match.group(1) if match else None


def classify_failure(
    output: str, returncode: int | None, *, timed_out: bool, timeout: float
) -> EngineError | None:
    """The ``EngineError`` for a finished (or killed) pw.x run, or None if it looks fine."""
    tail = _tail(output)
    if timed_out:
        return EngineError(
            f"pw.x did not finish within {timeout:g} s",
            retryable=True,
            code="engine_timeout",
            output_tail=tail,
        )
    if "convergence NOT achieved" in output:
        return EngineError(
            "pw.x SCF did not converge",
            retryable=False,
            code="scf_not_converged",
            output_tail=tail,
        )
    error = _ERROR_RE.search(output)
    if error is not None:
        routine, message = error.group(1), error.group(3).strip()
        if routine in _IO_ROUTINES:
            return EngineError(
                f"pw.x I/O error in {routine}: {message}",
                retryable=True,
                code="engine_io_error",
                output_tail=tail,
            )
        return EngineError(
            f"pw.x error in routine {routine}: {message}",
            retryable=False,
            code="pwx_input_error",
            output_tail=tail,
        )
    if any(marker in output for marker in _MISSING_EXECUTABLE) or returncode == 127:
        return EngineError(
            "pw.x executable not found",
            retryable=False,
            code="engine_unavailable",
            output_tail=tail,
        )
    if returncode is not None and returncode < 0:
        return EngineError(
            f"pw.x was killed by signal {signal.Signals(-returncode).name}",
            retryable=True,
            code="engine_crashed",
            output_tail=tail,
        )
    if returncode:
        # Unknown non-zero exit (mpirun reports a rank killed by a signal this way).
        return EngineError(
            f"pw.x exited with status {returncode}",
            retryable=True,
            code="engine_crashed",
            output_tail=tail,
        )
    return None


class _TimedEspressoProfile(EspressoProfile):
    """EspressoProfile whose ``run`` adds a timeout, our environment and failure classification."""

    def __init__(self, command: str, pseudo_dir: str, timeout: float) -> None:
        super().__init__(command=command, pseudo_dir=pseudo_dir)  # type: ignore[no-untyped-call]
        self.timeout = timeout

    def run(
        self,
        directory: Path,
        inputfile: str | None,
        outputfile: str,
        errorfile: str | None = None,
        append: bool = False,
    ) -> None:
        argv = self.get_command(inputfile)
        out_path = directory / outputfile
        err_path = directory / (errorfile or "pw.err")
        with open(out_path, "wb") as fd_out, open(err_path, "wb") as fd_err:
            try:
                # Own session: on timeout the whole group (mpirun and its ranks) is signalled.
                proc = subprocess.Popen(
                    argv,
                    cwd=directory,
                    stdin=subprocess.DEVNULL,
                    stdout=fd_out,
                    stderr=fd_err,
                    env=subprocess_env(),
                    start_new_session=True,
                )
            except OSError as exc:
                raise EngineError(
                    f"cannot start {argv[0]!r}: {exc.strerror or exc}",
                    retryable=False,
                    code="engine_unavailable",
                ) from exc
            timed_out = False
            try:
                proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
        output = _read(out_path) + "\n" + _read(err_path)
        failure = classify_failure(
            output, proc.returncode, timed_out=timed_out, timeout=self.timeout
        )
        if failure is not None:
            raise failure


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGTERM, _KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def _prepare_input_data(input_data: dict[str, dict[str, Any]], workdir: Path) -> dict[str, Any]:
    """The user's namelists with engine-owned keys replaced: SCF with forces, files in workdir."""
    nested: dict[str, dict[str, Any]] = {}
    for section, values in input_data.items():
        sec = section.lower().lstrip("&")
        owned = _ENGINE_KEYS.get(sec, set())
        nested[sec] = {
            key: value
            for key, value in values.items()
            if key.lower() not in owned and not key.lower().startswith("celldm")
        }
    control = nested.setdefault("control", {})
    control.update(
        {
            "calculation": "scf",
            "tprnfor": True,  # ASE 3.29 does not add it from the requested properties
            "outdir": str(workdir / "out"),
            "prefix": "zpe",
            "disk_io": "none",  # task scratch is thrown away; skip wavefunction I/O
        }
    )
    return nested


class QeEngine(Engine):
    """Engine ``qe``: one pw.x SCF per task (``pw_command`` may be ``mpirun -np 2 pw.x``)."""

    name = "qe"

    def __init__(
        self,
        pw_command: str,
        pseudo_dir: str,
        timeout_seconds: float,
        version: str | None = None,
    ) -> None:
        self.pw_command = pw_command
        self.pseudo_dir = pseudo_dir
        self.timeout_seconds = timeout_seconds
        self._version = version

    def version(self) -> str:
        """The configured version, else ``qe-<banner version>`` (probed once per command)."""
        if self._version:
            return self._version
        with _version_lock:
            cached = _version_cache.get(self.pw_command)
            if cached is None:
                detected = detect_pw_version(self.pw_command)
                if detected is None:
                    # Not cached: pw.x may appear later (and a task would fail anyway).
                    return "qe-unknown"
                cached = _version_cache[self.pw_command] = f"qe-{detected}"
        return cached

    def compute(self, spec: TaskSpec, workdir: Path) -> TaskResult:
        if spec.qe is None:
            raise EngineError("task has no QE settings", retryable=False, code="pwx_input_error")
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        atoms = Atoms(symbols=spec.symbols, positions=spec.positions, cell=spec.cell, pbc=spec.pbc)
        calc = Espresso(
            profile=_TimedEspressoProfile(self.pw_command, self.pseudo_dir, self.timeout_seconds),
            input_data=_prepare_input_data(spec.qe.input_data, workdir),
            pseudopotentials=dict(spec.qe.pseudopotentials),
            # None makes ASE write "K_POINTS gamma" (Gamma-only code path in pw.x).
            kpts=tuple(spec.qe.kpts) if spec.qe.kpts is not None else None,
            koffset=tuple(spec.qe.koffset),
            directory=str(workdir),
        )
        atoms.calc = calc
        start = time.perf_counter()
        try:
            forces = np.asarray(atoms.get_forces(), dtype=np.float64)
            energy = float(atoms.get_potential_energy())
        except EngineError:
            raise
        except KeyError as exc:
            # e.g. a species without a pseudopotential: ASE fails while writing the input.
            raise EngineError(
                f"cannot write the pw.x input: missing {exc}",
                retryable=False,
                code="pwx_input_error",
            ) from exc
        except Exception as exc:
            # pw.x exited cleanly but ASE could not read energy/forces (truncated output?).
            output = _read(workdir / calc.template.outputname)
            raise EngineError(
                f"cannot read pw.x output: {type(exc).__name__}: {exc}",
                retryable=True,
                code="engine_output_unreadable",
                output_tail=_tail(output),
            ) from exc
        wall = time.perf_counter() - start
        if forces.shape != (len(atoms), 3) or not np.all(np.isfinite(forces)):
            raise EngineError(
                "pw.x returned no usable forces",
                retryable=True,
                code="engine_output_unreadable",
                output_tail=_tail(_read(workdir / calc.template.outputname)),
            )
        match = _SCF_DONE_RE.search(_read(workdir / calc.template.outputname))
        return TaskResult(
            energy_ev=energy,
            forces_ev_per_a=forces.tolist(),
            engine=self.name,
            engine_version=self.version(),
            wall_seconds=wall,
            scf_iterations=int(match.group(1)) if match else None,
        )
