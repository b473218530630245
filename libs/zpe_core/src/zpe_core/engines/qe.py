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

import hashlib
import logging
import os
import re
import resource
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.espresso import Espresso, EspressoProfile

from zpe_client.models import TaskResult, TaskSpec
from zpe_core.engines.base import Engine
from zpe_core.errors import EngineError, InputError, ShippedOutdirError
from zpe_core.physics.namelists import (
    PW_DEFAULT_CONV_THR_RY,
    InputLimits,
    engine_namelists,
    refused_spec,
)
from zpe_core.physics.plan import is_reference, pseudo_digest

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


#: Worker variables pw.x (and mpirun) may need; nothing else is passed on (no ZPE_*
#: settings, store URLs, tokens or cloud credentials).
_ENV_KEPT = ("PATH", "LD_LIBRARY_PATH")
_ENV_KEPT_PREFIXES = ("OMPI_", "PMIX_")


def subprocess_env(home: Path | str | None = None) -> dict[str, str]:
    """The environment pw.x runs with: a minimal one built from scratch.

    ``PATH``, ``LD_LIBRARY_PATH`` and Open MPI's ``OMPI_*`` / ``PMIX_*`` variables of
    the worker, one OpenMP thread, ``LANG=C``, and ``HOME`` / ``TMPDIR`` in the task's
    scratch (``home``); Open MPI is allowed to run as root.
    """
    env = {key: os.environ[key] for key in _ENV_KEPT if key in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith(_ENV_KEPT_PREFIXES)})
    env.setdefault("PATH", os.defpath)
    env["OMP_NUM_THREADS"] = "1"
    env["LANG"] = env["LC_ALL"] = "C"
    scratch = str(home) if home is not None else tempfile.gettempdir()
    env["HOME"] = env["TMPDIR"] = scratch
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return env


def resource_limits(max_memory_mb: int, max_file_mb: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that caps pw.x's address space and file size (0: no cap), or None.

    It only calls ``setrlimit`` (async-signal-safe work between fork and exec).
    """
    limits = [
        (res, mb * 1024 * 1024)
        for res, mb in ((resource.RLIMIT_AS, max_memory_mb), (resource.RLIMIT_FSIZE, max_file_mb))
        if mb > 0
    ]
    if not limits:
        return None

    def apply() -> None:
        for res, value in limits:
            _, hard = resource.getrlimit(res)
            cap = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(res, (cap, hard))

    return apply


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


def engine_version_of(pw_command: str) -> str | None:
    """The qe engine version of ``pw_command`` as tasks record it (``qe-6.7MaX``), or None."""
    detected = detect_pw_version(pw_command)
    return None if detected is None else f"qe-{detected}"


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
    if returncode is not None and -returncode == signal.SIGXFSZ:
        return EngineError(
            "pw.x was stopped for writing a file larger than ZPE_PW_MAX_FILE_MB",
            retryable=False,
            code="engine_resource_limit",
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

    def __init__(
        self,
        command: str,
        pseudo_dir: str,
        timeout: float,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(command=command, pseudo_dir=pseudo_dir)  # type: ignore[no-untyped-call]
        self.timeout = timeout
        self.preexec = preexec

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
                    env=subprocess_env(home=directory),
                    start_new_session=True,
                    preexec_fn=self.preexec,  # rlimits only (see resource_limits)
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


#: Every SCF converges this much tighter than the task's ``conv_thr`` (pw.x's default
#: 1e-6 Ry when unset). Central differences divide force differences by 2 delta, so SCF
#: noise that conv_thr allows in one energy moves frequencies; and warm starts from the
#: reference's density leave an error that leans the same way at +delta and -delta and
#: does not cancel. Measured (docs/benchmarks.md, issue 14): at 1e-2 NH3's umbrella came
#: out 0.16 cm^-1 off cold, at 1e-3 warm and cold agree within 0.1 cm^-1 on H2O, NH3,
#: CH4 and CO2, for 3 more SCF iterations cold.
SCF_CONV_THR_FACTOR = 1e-3

#: ... but never below this (Ry): near it pw.x's own numerical noise stops convergence.
SCF_CONV_THR_FLOOR_RY = 1e-14


def _scf_conv_thr(electrons: dict[str, Any]) -> float:
    """The ``conv_thr`` pw.x is given: the task's (or pw.x's default) times the factor,
    no tighter than the floor (a task asking for less than the floor keeps its own)."""
    value: Any = PW_DEFAULT_CONV_THR_RY
    for key in [k for k in electrons if k.lower() == "conv_thr"]:
        value = electrons.pop(key)
    try:
        asked = float(str(value).lower().replace("d", "e"))
    except ValueError:
        asked = PW_DEFAULT_CONV_THR_RY  # pw.x would refuse it anyway
    return min(asked, max(asked * SCF_CONV_THR_FACTOR, SCF_CONV_THR_FLOOR_RY))


def _prepare_input_data(
    input_data: dict[str, dict[str, Any]],
    workdir: Path,
    *,
    save: bool = False,
    warm: bool = False,
    warm_wfc: bool = False,
    limits: InputLimits | None = None,
) -> dict[str, Any]:
    """The user's namelists with engine-owned keys replaced: SCF with forces, files in workdir.

    Only allowlisted ``passed`` keys of the user survive, re-checked here against
    ``limits`` (:func:`zpe_core.physics.namelists.engine_namelists`, ``InputError`` if the spec
    holds anything else); strings are wrapped so ASE writes them with Fortran quoting.
    ``conv_thr`` is tightened by ``SCF_CONV_THR_FACTOR``.

    ``save`` keeps the converged density on disk (the reference of a warm-start
    cache); ``warm`` starts from the density in ``workdir/out`` (``warm_wfc``: and
    from its wavefunctions).
    """
    nested = engine_namelists(input_data, limits or InputLimits())
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
    electrons = nested.setdefault("electrons", {})
    electrons["conv_thr"] = _scf_conv_thr(electrons)
    if warm:
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


# A reference's outdir shipped to other machines for their warm starts: MAGIC, the SHA-256 of
# the rest, then zlib of (u16 name length, name, u64 size, bytes) per file. Only
# pw.x's restart files, by name; sizes capped packed and unpacked.
_SHIPPED_MAGIC = b"ZPE-REFERENCE-OUTDIR-1\n"
_SHIPPED_NAME = re.compile(
    rf"{_PREFIX}\.xml|{_PREFIX}\.save/[A-Za-z0-9_-]{{1,64}}\.(?:dat|txt|xml)"
)


def pack_outdir(outdir: Path, max_bytes: int) -> bytes | None:
    """The restart files of ``outdir`` as one blob, or None if over ``max_bytes``."""
    parts: list[bytes] = []
    total = 0
    for path in sorted(outdir.rglob("*")):
        name = path.relative_to(outdir).as_posix()
        if path.is_symlink() or not path.is_file() or not _SHIPPED_NAME.fullmatch(name):
            continue
        data = path.read_bytes()
        encoded = name.encode()
        total += 10 + len(encoded) + len(data)
        if total > max_bytes:
            return None
        parts += [struct.pack(">H", len(encoded)), encoded, struct.pack(">Q", len(data)), data]
    body = zlib.compress(b"".join(parts), 1)
    blob = _SHIPPED_MAGIC + hashlib.sha256(body).digest() + body
    return blob if len(blob) <= max_bytes else None


def unpack_outdir(blob: bytes, dest: Path, max_bytes: int) -> None:
    """Write the files of a ``pack_outdir`` blob under ``dest`` (raises ``ShippedOutdirError``)."""
    head = len(_SHIPPED_MAGIC)
    if len(blob) > max_bytes or not blob.startswith(_SHIPPED_MAGIC):
        raise ShippedOutdirError("not a shipped reference outdir (or too large)")
    digest, body = blob[head : head + 32], blob[head + 32 :]
    if hashlib.sha256(body).digest() != digest:
        raise ShippedOutdirError("shipped reference outdir is corrupt (digest mismatch)")
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise ShippedOutdirError(f"shipped reference outdir is corrupt: {exc}") from exc
    if len(raw) > max_bytes or inflater.unconsumed_tail or not inflater.eof:
        raise ShippedOutdirError("shipped reference outdir unpacks beyond the size cap")
    files: dict[str, bytes] = {}
    pos = 0
    try:
        while pos < len(raw):
            (name_len,) = struct.unpack_from(">H", raw, pos)
            name = raw[pos + 2 : pos + 2 + name_len].decode()
            (size,) = struct.unpack_from(">Q", raw, pos + 2 + name_len)
            start = pos + 10 + name_len
            if start + size > len(raw):
                raise ShippedOutdirError("shipped reference outdir is truncated")
            files[name] = raw[start : start + size]
            pos = start + size
    except (struct.error, UnicodeDecodeError) as exc:
        raise ShippedOutdirError(f"shipped reference outdir is corrupt: {exc}") from exc
    if any(not _SHIPPED_NAME.fullmatch(name) for name in files):
        raise ShippedOutdirError("shipped reference outdir names a file it may not")
    if _DENSITY_FILE.as_posix() not in files:
        raise ShippedOutdirError("shipped reference outdir has no charge density")
    for name, data in files.items():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


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

    def pack(self, key: str, max_bytes: int) -> bytes | None:
        """Entry ``key`` as a blob for another machine (``pack_outdir``), or None."""
        entry = self.get(key)
        if entry is None:
            return None
        try:
            return pack_outdir(entry, max_bytes)
        except OSError:
            return None  # evicted while being read

    def unpack(self, key: str, blob: bytes, max_bytes: int) -> bool:
        """Add entry ``key`` from another machine's ``pack``; False if the blob is refused."""
        if not self._valid_key(key) or not self._ready():
            return False
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            unpack_outdir(blob, staging / "out", max_bytes)
            os.rename(staging / "out", self.root / key)
        except ShippedOutdirError as exc:
            log.warning("shipped reference outdir refused: %s", exc)
            return False
        except OSError:
            pass  # a concurrent put won (then the entry is there), or the disk is full
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._evict()
        return self.get(key) is not None

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
        shipped_state_max_bytes: int = 64 * 1024 * 1024,
        limits: InputLimits | None = None,
        max_memory_mb: int = 0,
        max_file_mb: int = 0,
    ) -> None:
        self.pw_command = pw_command
        self.pseudo_dir = pseudo_dir
        self.timeout_seconds = timeout_seconds
        self._version = version
        self.warm_start_cache = warm_start_cache  # None: every SCF starts cold
        self.shipped_state_max_bytes = shipped_state_max_bytes
        self.limits = limits or InputLimits()
        self.preexec = resource_limits(max_memory_mb, max_file_mb)

    def version(self) -> str:
        """The configured version, else ``qe-<banner version>`` (probed once per command)."""
        if self._version:
            return self._version
        with _version_lock:
            cached = _version_cache.get(self.pw_command)
            if cached is None:
                detected = engine_version_of(self.pw_command)
                if detected is None:
                    # Not cached: pw.x may appear later (and a task would fail anyway).
                    return "qe-unknown"
                cached = _version_cache[self.pw_command] = detected
        return cached

    def compute(self, spec: TaskSpec, workdir: Path) -> TaskResult:
        if spec.qe is None:
            raise EngineError("task has no QE settings", retryable=False, code="pwx_input_error")
        try:
            # Any namelist content the planner would have refused stops here (tampered spec).
            engine_namelists(spec.qe.input_data, self.limits)
        except InputError as exc:
            raise refused_spec(exc) from exc
        self._check_pseudos(spec)
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        cache, ref = self.warm_start_cache, spec.reference_key
        if cache is None or ref is None:
            return self._compute(spec, workdir)
        if is_reference(spec):  # keep its density
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

    def needs_reference_density(self, spec: TaskSpec) -> bool:
        cache, ref = self.warm_start_cache, spec.reference_key
        if cache is None or ref is None or is_reference(spec):
            return False
        return cache.get(ref) is None

    def export_reference_density(self, spec: TaskSpec) -> bytes | None:
        if self.warm_start_cache is None or not is_reference(spec):
            return None
        assert spec.reference_key is not None
        return self.warm_start_cache.pack(spec.reference_key, self.shipped_state_max_bytes)

    def import_reference_density(self, spec: TaskSpec, blob: bytes) -> bool:
        cache, ref = self.warm_start_cache, spec.reference_key
        if cache is None or ref is None or is_reference(spec):
            return False
        return cache.unpack(ref, blob, self.shipped_state_max_bytes)

    def _check_pseudos(self, spec: TaskSpec) -> None:
        """Refuse to compute with pseudopotential files other than the key promised."""
        assert spec.qe is not None
        for filename in spec.qe.pseudopotentials.values():
            try:
                info = (Path(self.pseudo_dir) / filename).stat()
            except OSError:
                continue  # missing: pw.x says so (a permanent pwx_input_error)
            if not stat.S_ISREG(info.st_mode):  # a directory fails, a FIFO blocks pw.x
                raise EngineError(
                    f"pseudopotential {filename} is not a regular file on this worker",
                    retryable=False,
                    code="bad_pseudopotential",
                )
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
            spec.qe.input_data, workdir, save=save, warm=warm, warm_wfc=warm_wfc, limits=self.limits
        )
        calc = Espresso(
            profile=_TimedEspressoProfile(
                self.pw_command, self.pseudo_dir, self.timeout_seconds, self.preexec
            ),
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
