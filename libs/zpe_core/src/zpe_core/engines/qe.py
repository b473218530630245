"""The ``qe`` engine: one pw.x SCF with forces, through ASE's Espresso calculator.

ASE writes the input and reads the output. Running pw.x is done by our own
profile (a subclass of ``EspressoProfile``) because ASE's ``check_call`` has no
timeout, inherits the environment unchanged and gives no way to classify
failures. Failures become ``EngineError`` with a stable code, a ``retryable``
flag and the tail of pw.x's output.

Warm starts (``ZPE_WARM_START``): the reference (undisplaced) task of a job
keeps its converged ``outdir`` in a small per-machine cache keyed by its task
id (``plan.scoped_task_id``: per owner under ``ZPE_REUSE_SCOPE=owner``); a
displaced task of the same job (``spec.reference_key``) computed on the same
machine copies it and starts pw.x from that charge density
(``startingpot='file'``, plus ``startingwfc='file'`` when there is a single
k-point, since a displacement may lower the symmetry and change the
irreducible k-point set). A warm SCF converges to the same state within
``conv_thr``, so warm starts are not part of task keys; if a warm run fails
for any reason but a timeout, the task runs again cold.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
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
from zpe_core.plan import engine_owned, pseudo_digest, scoped_task_id

log = logging.getLogger("zpe.engines.qe")

TAIL_LINES = 40
VERSION_PROBE_TIMEOUT = 60.0
_KILL_GRACE_SECONDS = 5.0

_BANNER_RE = re.compile(r"Program PWSCF\s+v\.(\S+)")
_SCF_DONE_RE = re.compile(r"convergence has been achieved in\s+(\d+)\s+iterations")
_CPU_RE = re.compile(r"PWSCF\s+:\s+(?:(\d+)h\s*)?(?:(\d+)m\s*)?([\d.]+)s CPU")
_ERROR_RE = re.compile(r"Error in routine\s+(\S+)\s*\((-?\d+)\):\s*\n\s*(.*)")
# pw.x errors in these routines are file-system trouble on the worker, not bad input.
_IO_ROUTINES = frozenset({"davcio", "diropn", "seqopn", "cdiaghg_io", "pw_writefile"})
_MISSING_EXECUTABLE = (
    "unable to find the specified executable",
    "was unable to launch the specified application",
)

_PREFIX = "zpe"
_DENSITY_FILE = Path(f"{_PREFIX}.save") / "charge-density.dat"

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


def _prepare_input_data(
    input_data: dict[str, dict[str, Any]],
    workdir: Path,
    *,
    save: bool = False,
    warm: bool = False,
    warm_wfc: bool = False,
) -> dict[str, Any]:
    """The user's namelists with engine-owned keys replaced: SCF with forces, files in workdir.

    ``save`` keeps the converged density on disk (the reference of a warm-start
    cache); ``warm`` starts from the density in ``workdir/out`` (``warm_wfc``: and
    from its wavefunctions).
    """
    nested: dict[str, dict[str, Any]] = {}
    for section, values in input_data.items():
        sec = section.lower().lstrip("&")
        nested[sec] = {key: value for key, value in values.items() if not engine_owned(sec, key)}
    control = nested.setdefault("control", {})
    control.update(
        {
            "calculation": "scf",
            "tprnfor": True,  # ASE 3.29 does not add it from the requested properties
            "outdir": str(workdir / "out"),
            "prefix": _PREFIX,
            # Task scratch is thrown away: skip wavefunction I/O unless a reference is kept.
            "disk_io": "low" if save else "none",
        }
    )
    if warm:
        electrons = nested.setdefault("electrons", {})
        for key in [k for k in electrons if k.lower() in ("startingpot", "startingwfc")]:
            del electrons[key]
        electrons["startingpot"] = "file"
        if warm_wfc:
            electrons["startingwfc"] = "file"
    return nested


def _cpu_seconds(output: str) -> float | None:
    """pw.x's total CPU time (``PWSCF : 1m 2.50s CPU ...``), or None."""
    found = _CPU_RE.findall(output)
    if not found:
        return None
    hours, minutes, seconds = found[-1]
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds)


def default_warm_start_dir(scratch_dir: str | None) -> Path:
    """``<scratch_dir or the system temp dir>/zpe-warm-<uid>``."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(scratch_dir or tempfile.gettempdir()) / f"zpe-warm-{uid}"


class WarmStartCache:
    """Converged outdirs of reference tasks on this machine, keyed by task id (LRU).

    Entries appear by atomic rename, so a reader sees a whole entry or none; an
    entry evicted while being copied makes that copy fail, and the task starts cold.
    """

    def __init__(self, root: Path, max_entries: int = 8) -> None:
        self.root = Path(root)
        self.max_entries = max(1, max_entries)

    def _ready(self) -> bool:
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = self.root.stat()
        except OSError:
            return False
        # Never read densities from a directory someone else controls.
        return not hasattr(os, "getuid") or st.st_uid == os.getuid()

    @staticmethod
    def _valid_key(key: str) -> bool:
        return bool(re.fullmatch(r"t[0-9a-f]{64}", key))

    def get(self, key: str) -> Path | None:
        """The cached outdir of reference ``key``, or None."""
        if not self._valid_key(key) or not self._ready():
            return None
        entry = self.root / key
        if not (entry / _DENSITY_FILE).is_file():
            return None
        try:
            os.utime(entry)  # least recently used goes first
        except OSError:
            return None
        return entry

    def put(self, key: str, outdir: Path) -> None:
        """Keep a copy of ``outdir`` (a converged reference) under ``key``."""
        if not self._valid_key(key) or not (outdir / _DENSITY_FILE).is_file():
            return
        if not self._ready() or (self.root / key).exists():
            return
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            # The pseudopotential copies in <prefix>.save are not needed to restart.
            shutil.copytree(
                outdir, staging / "out", ignore=shutil.ignore_patterns("*.UPF", "*.upf")
            )
            os.rename(staging / "out", self.root / key)
        except OSError:
            pass  # a concurrent put won, or the disk is full: no cache entry
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._evict()

    def _evict(self) -> None:
        try:
            entries = [p for p in self.root.iterdir() if self._valid_key(p.name)]
            entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        except OSError:
            return
        for stale in entries[self.max_entries :]:
            shutil.rmtree(stale, ignore_errors=True)


class QeEngine(Engine):
    """Engine ``qe``: one pw.x SCF per task (``pw_command`` may be ``mpirun -np 2 pw.x``)."""

    name = "qe"

    def __init__(
        self,
        pw_command: str,
        pseudo_dir: str,
        timeout_seconds: float,
        version: str | None = None,
        *,
        warm_start_cache: WarmStartCache | None = None,
    ) -> None:
        self.pw_command = pw_command
        self.pseudo_dir = pseudo_dir
        self.timeout_seconds = timeout_seconds
        self._version = version
        self.warm_start_cache = warm_start_cache  # None: every SCF starts cold

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
        self._check_pseudos(spec)
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        cache, ref = self.warm_start_cache, spec.reference_key
        if cache is None or ref is None:
            return self._compute(spec, workdir)
        if scoped_task_id(spec) == ref:  # this is the reference point: keep its density
            result = self._compute(spec, workdir, save=True)
            cache.put(ref, workdir / "out")
            return result
        source = cache.get(ref)
        if source is None:
            return self._compute(spec, workdir)
        warm_dir = workdir / "warm"
        try:
            shutil.copytree(source, warm_dir / "out")
            qe = spec.qe
            single_k = qe.kpts is None or (qe.kpts == [1, 1, 1] and qe.koffset == [0, 0, 0])
            return self._compute(spec, warm_dir, warm=True, warm_wfc=single_k)
        except OSError as exc:
            log.warning("warm start unavailable: %s", exc)
        except EngineError as exc:
            if exc.code == "engine_timeout":
                raise
            log.warning("warm start failed (%s); running the task cold", exc.code)
        finally:
            shutil.rmtree(warm_dir, ignore_errors=True)
        return self._compute(spec, workdir)

    def _check_pseudos(self, spec: TaskSpec) -> None:
        """Refuse to compute with pseudopotential files other than the key promised."""
        assert spec.qe is not None
        for label, expected in spec.qe.pseudo_digests.items():
            name = spec.qe.pseudopotentials.get(label)
            if expected is None or name is None:
                continue  # the planner could not see the file: the key holds its name only
            if pseudo_digest(self.pseudo_dir, name) != expected:
                raise EngineError(
                    f"pseudopotential {name} on this worker differs from the one the task "
                    "was planned with (or is missing)",
                    retryable=True,
                    code="pseudo_mismatch",
                )

    def _compute(
        self,
        spec: TaskSpec,
        workdir: Path,
        *,
        save: bool = False,
        warm: bool = False,
        warm_wfc: bool = False,
    ) -> TaskResult:
        assert spec.qe is not None
        atoms = Atoms(symbols=spec.symbols, positions=spec.positions, cell=spec.cell, pbc=spec.pbc)
        input_data = _prepare_input_data(
            spec.qe.input_data, workdir, save=save, warm=warm, warm_wfc=warm_wfc
        )
        calc = Espresso(
            profile=_TimedEspressoProfile(self.pw_command, self.pseudo_dir, self.timeout_seconds),
            input_data=input_data,
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
        output = _read(workdir / calc.template.outputname)
        match = _SCF_DONE_RE.search(output)
        return TaskResult(
            energy_ev=energy,
            forces_ev_per_a=forces.tolist(),
            engine=self.name,
            engine_version=self.version(),
            wall_seconds=wall,
            scf_iterations=int(match.group(1)) if match else None,
            warm_started=warm,
            cpu_seconds=_cpu_seconds(output),
        )
