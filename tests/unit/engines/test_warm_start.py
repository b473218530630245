"""Warm starts of the qe engine without pw.x: the local cache, the namelists it
writes, falling back to a cold start, the pseudopotential check, and shipping a
reference's density to other machines (packing, validation, the store)."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import zlib
from pathlib import Path

import pytest

from zpe_client.models import QeCalcSpec, TaskSpec
from zpe_core.engines import get_engine
from zpe_core.engines.qe import (
    QeEngine,
    WarmStartCache,
    _cpu_seconds,
    _prepare_input_data,
    pack_outdir,
    unpack_outdir,
)
from zpe_core.errors import EngineError, ShippedOutdirError
from zpe_core.jobs.compute import compute_task
from zpe_core.jobs.runner import StoreDensities
from zpe_core.physics.plan import pseudo_digest, task_key
from zpe_core.settings import Settings
from zpe_core.store.memory import MemoryJobStore

REF = "t" + "a" * 64


def _outdir(root: Path, density: str = "rho") -> Path:
    out = root / "out"
    (out / "zpe.save").mkdir(parents=True)
    (out / "zpe.save" / "charge-density.dat").write_text(density)
    (out / "zpe.save" / "H.pbe-kjpaw.UPF").write_text("pseudo")
    return out


def _spec(reference_key: str | None, digests: dict[str, str | None] | None = None) -> TaskSpec:
    return TaskSpec(
        engine="qe",
        engine_version="qe-fake",
        symbols=["H", "H"],
        positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.75]],
        cell=[[6.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 6.0]],
        pbc=[True, True, True],
        qe=QeCalcSpec(
            input_data={"system": {"ecutwfc": 20.0}, "electrons": {"startingwfc": "random"}},
            pseudopotentials={"H": "H.pbe-kjpaw.UPF"},
            pseudo_digests=digests or {},
        ),
        reference_key=reference_key,
    )


def _fake_pw(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-pw.x"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(script)


def test_cache_round_trip_without_pseudopotentials(tmp_path: Path) -> None:
    cache = WarmStartCache(tmp_path / "cache")
    assert cache.get(REF) is None
    cache.put(REF, _outdir(tmp_path / "ref"))
    entry = cache.get(REF)
    assert entry is not None
    assert (entry / "zpe.save" / "charge-density.dat").read_text() == "rho"
    assert not (entry / "zpe.save" / "H.pbe-kjpaw.UPF").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [REF]  # no staging left
    cache.put(REF, _outdir(tmp_path / "again", density="other"))  # first entry wins
    assert (entry / "zpe.save" / "charge-density.dat").read_text() == "rho"


def test_cache_refuses_bad_keys_and_outdirs_without_a_density(tmp_path: Path) -> None:
    cache = WarmStartCache(tmp_path / "cache")
    cache.put("../escape", _outdir(tmp_path / "a"))
    assert cache.get("../escape") is None
    empty = tmp_path / "b" / "out"
    empty.mkdir(parents=True)
    cache.put(REF, empty)
    assert cache.get(REF) is None


def test_cache_evicts_least_recently_used(tmp_path: Path) -> None:
    cache = WarmStartCache(tmp_path / "cache", max_entries=2)
    keys = ["t" + c * 64 for c in "abc"]
    for i, key in enumerate(keys[:2]):
        cache.put(key, _outdir(tmp_path / key))
        os.utime(tmp_path / "cache" / key, (1000 + i, 1000 + i))
    assert cache.get(keys[0]) is not None  # touched: now the most recent
    cache.put(keys[2], _outdir(tmp_path / keys[2]))
    assert cache.get(keys[1]) is None
    assert cache.get(keys[0]) is not None and cache.get(keys[2]) is not None


def test_prepare_input_data_warm_and_save_flags(tmp_path: Path) -> None:
    user = {"electrons": {"startingwfc": "random", "conv_thr": 1e-10}}
    cold = _prepare_input_data(user, tmp_path)
    assert cold["control"]["disk_io"] == "none"
    assert cold["electrons"] == {"startingwfc": "random", "conv_thr": pytest.approx(1e-13)}
    assert _prepare_input_data(user, tmp_path, save=True)["control"]["disk_io"] == "low"
    warm = _prepare_input_data(user, tmp_path, warm=True)
    assert warm["electrons"] == {"conv_thr": pytest.approx(1e-13), "startingpot": "file"}
    both = _prepare_input_data(user, tmp_path, warm=True, warm_wfc=True)
    assert both["electrons"]["startingwfc"] == "file"
    assert user == {"electrons": {"startingwfc": "random", "conv_thr": 1e-10}}  # not mutated


def test_every_scf_converges_a_thousand_times_tighter_than_conv_thr(tmp_path: Path) -> None:
    def conv(electrons: dict[str, object]) -> float:
        value = _prepare_input_data({"electrons": electrons}, tmp_path)["electrons"]["conv_thr"]
        assert isinstance(value, float)
        return value

    assert conv({"CONV_THR": 1e-8}) == pytest.approx(1e-11)
    assert conv({"conv_thr": 2e-9}) == pytest.approx(2e-12)
    assert conv({}) == pytest.approx(1e-9)  # pw.x's default 1e-6, tightened
    assert conv({"conv_thr": 1e-12}) == pytest.approx(1e-14)  # not below the floor
    assert conv({"conv_thr": 1e-15}) == pytest.approx(1e-15)  # tighter than it: its own
    assert "CONV_THR" not in _prepare_input_data({"electrons": {"CONV_THR": 1e-8}}, tmp_path)


def test_failed_warm_start_runs_the_task_again_cold(tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    pw = _fake_pw(tmp_path, f"grep -c \"startingpot *= *'file'\" espresso.pwi >> {log}; exit 3")
    cache = WarmStartCache(tmp_path / "cache")
    cache.put(REF, _outdir(tmp_path / "ref"))
    engine = QeEngine(pw, str(tmp_path), 30.0, version="qe-fake", warm_start_cache=cache)
    with pytest.raises(EngineError) as info:
        engine.compute(_spec(REF), tmp_path / "work")
    assert info.value.code == "engine_crashed"
    assert log.read_text().split() == ["1", "0"]  # warm first, then cold
    assert not (tmp_path / "work" / "warm").exists()


def test_no_cache_entry_or_no_cache_means_cold(tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    pw = _fake_pw(tmp_path, f"grep -c \"startingpot *= *'file'\" espresso.pwi >> {log}; exit 3")
    cache = WarmStartCache(tmp_path / "cache")
    for engine in (
        QeEngine(pw, str(tmp_path), 30.0, version="qe-fake", warm_start_cache=cache),
        QeEngine(pw, str(tmp_path), 30.0, version="qe-fake"),
    ):
        with pytest.raises(EngineError):
            engine.compute(_spec(REF), tmp_path / "work")
    assert log.read_text().split() == ["0", "0"]


def test_reference_keeps_its_density_only_after_success(tmp_path: Path) -> None:
    spec = _spec(None)
    spec.reference_key = task_key(spec)  # this task is its job's reference
    pw = _fake_pw(
        tmp_path,
        "grep -q \"disk_io *= *'low'\" espresso.pwi || exit 4\n"
        "mkdir -p out/zpe.save && echo rho > out/zpe.save/charge-density.dat; exit 3",
    )
    cache = WarmStartCache(tmp_path / "cache")
    engine = QeEngine(pw, str(tmp_path), 30.0, version="qe-fake", warm_start_cache=cache)
    with pytest.raises(EngineError) as info:
        engine.compute(spec, tmp_path / "work")
    assert "status 3" in info.value.message  # ran with disk_io='low', then failed
    assert cache.get(spec.reference_key) is None  # a failed reference is never cached


def test_pseudopotential_other_than_planned_is_refused(tmp_path: Path) -> None:
    (tmp_path / "H.pbe-kjpaw.UPF").write_text("<UPF> v2 </UPF>")
    planned: dict[str, str | None] = {"H": "sha256:" + "0" * 64}
    pw = _fake_pw(tmp_path, f"touch {tmp_path / 'ran'}; exit 3")
    engine = QeEngine(pw, str(tmp_path), 30.0, version="qe-fake")
    with pytest.raises(EngineError) as info:
        engine.compute(_spec(None, planned), tmp_path / "work")
    assert (info.value.code, info.value.retryable) == ("pseudo_mismatch", True)
    assert not (tmp_path / "ran").exists()
    # The planned digest of the same file passes the check (and pw.x runs).
    good: dict[str, str | None] = {"H": pseudo_digest(str(tmp_path), "H.pbe-kjpaw.UPF")}
    with pytest.raises(EngineError) as info:
        engine.compute(_spec(None, good), tmp_path / "work2")
    assert info.value.code == "engine_crashed" and (tmp_path / "ran").exists()


def test_get_engine_warm_start_setting(tmp_path: Path) -> None:
    on = get_engine("qe", Settings(qe_version="v", scratch_dir=str(tmp_path)))  # on by default
    assert isinstance(on, QeEngine) and on.warm_start_cache is not None
    assert on.warm_start_cache.root.parent == tmp_path
    off = get_engine("qe", Settings(qe_version="v", warm_start=False))
    assert isinstance(off, QeEngine) and off.warm_start_cache is None


def test_cpu_seconds_from_pwx_output() -> None:
    assert _cpu_seconds("     PWSCF        :      8.63s CPU     20.98s WALL\n") == 8.63
    assert _cpu_seconds("     PWSCF        :   2m 3.50s CPU      2m 5.00s WALL") == 123.5
    assert _cpu_seconds("     PWSCF        :   1h 2m 3.50s CPU   1h 3m WALL") == 3723.5
    assert _cpu_seconds("no timing here") is None


# ---------------------------------------------------------------- shipping to other machines

_FAKE_PWO = """\
     Program PWSCF v.6.7MaX starts on  1Dec2026 at  8:43:49

     lattice parameter (alat)  =      11.3384  a.u.
     number of atoms/cell      =            2

     celldm(1)=  11.338357  celldm(2)=   0.000000  celldm(3)=   0.000000
     celldm(4)=   0.000000  celldm(5)=   0.000000  celldm(6)=   0.000000

     crystal axes: (cart. coord. in units of alat)
               a(1) = (   1.000000   0.000000   0.000000 )
               a(2) = (   0.000000   1.000000   0.000000 )
               a(3) = (   0.000000   0.000000   1.000000 )

     site n.     atom                  positions (alat units)
         1           H   tau(   1) = (   0.0000000   0.0000000   0.0000000  )
         2           H   tau(   2) = (   0.0000000   0.0000000   0.1250000  )

     convergence has been achieved in   5 iterations

!    total energy              =     -2.30000000 Ry

     Forces acting on atoms (cartesian axes, Ry/au):

     atom    1 type  1   force =     0.00000000    0.00000000    0.01000000
     atom    2 type  1   force =     0.00000000    0.00000000   -0.01000000

   JOB DONE.
"""


def _shipping_pw(tmp_path: Path) -> tuple[str, Path]:
    """A fake pw.x that succeeds: a reference run (disk_io 'low') leaves a density, a
    pseudopotential copy and a wavefunction file; every run logs the density it found."""
    log = tmp_path / "found.log"
    (tmp_path / "fake.pwo").write_text(_FAKE_PWO)
    pw = _fake_pw(
        tmp_path,
        f"cat out/zpe.save/charge-density.dat >> {log} 2>/dev/null || echo none >> {log}\n"
        "if grep -q \"disk_io *= *'low'\" espresso.pwi; then\n"
        "  mkdir -p out/zpe.save && echo rho-of-the-reference > out/zpe.save/charge-density.dat\n"
        "  echo paw > out/zpe.save/paw.txt && echo wfc > out/zpe.save/wfc1.dat\n"
        "  echo pseudo > out/zpe.save/H.pbe-kjpaw.UPF && echo xml > out/zpe.xml\n"
        "fi\n"
        f"cat {tmp_path / 'fake.pwo'}",
    )
    return pw, log


def _machine(tmp_path: Path, pw: str, name: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "qe_version": "qe-fake",
        "pw_command": pw,
        "pseudo_dir": str(tmp_path),
        "scratch_dir": str(tmp_path),
        "warm_start": True,
        "warm_start_dir": str(tmp_path / f"warm-{name}"),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def _reference_and_displaced() -> tuple[TaskSpec, TaskSpec]:
    reference = _spec(None)
    reference.reference_key = task_key(reference)
    displaced = reference.model_copy(deep=True)
    displaced.positions[1][2] += 0.01
    return reference, displaced


def test_reference_density_reaches_another_machine_through_the_store(tmp_path: Path) -> None:
    pw, log = _shipping_pw(tmp_path)
    store = MemoryJobStore()
    densities = StoreDensities(store, 1024 * 1024)
    reference, displaced = _reference_and_displaced()
    assert reference.reference_key is not None

    assert not compute_task(
        reference, _machine(tmp_path, pw, "a"), densities=densities
    ).warm_started
    blob = store.get_reference_density(reference.reference_key)
    assert blob is not None and b"pseudo" not in zlib.decompress(
        blob[len(b"ZPE-REFERENCE-OUTDIR-1\n") + 32 :]
    )

    # Machine b never computed the reference: without the store it starts cold...
    assert not compute_task(displaced, _machine(tmp_path, pw, "b")).warm_started
    # ...with it, it fetches the density and starts warm from it.
    result = compute_task(displaced, _machine(tmp_path, pw, "c"), densities=densities)
    assert result.warm_started
    assert log.read_text().split() == ["none", "none", "rho-of-the-reference"]


def test_corrupt_or_foreign_shipped_density_means_a_cold_start(tmp_path: Path) -> None:
    pw, log = _shipping_pw(tmp_path)
    store = MemoryJobStore()
    reference, displaced = _reference_and_displaced()
    assert reference.reference_key is not None
    compute_task(reference, _machine(tmp_path, pw, "a"), densities=StoreDensities(store, 10**6))
    good = store.get_reference_density(reference.reference_key)
    assert good is not None
    flipped = good[:-1] + bytes([good[-1] ^ 1])
    cases = [(flipped, {}), (b"not a density at all", {}), (good, {"max": len(good) - 1})]
    for i, (blob, cap) in enumerate(cases):
        other = MemoryJobStore()
        other.put_reference_density(reference.reference_key, blob)
        overrides = {"warm_start_share_max_bytes": cap["max"]} if cap else {}
        settings = _machine(tmp_path, pw, f"m{i}", **overrides)
        result = compute_task(displaced, settings, densities=StoreDensities(other, 10**6))
        assert not result.warm_started
        assert not (tmp_path / f"warm-m{i}" / reference.reference_key).exists()
    assert log.read_text().split() == ["none"] * 4


def _blob(files: dict[str, bytes]) -> bytes:
    parts = []
    for name, data in files.items():
        parts += [struct.pack(">H", len(name)), name.encode(), struct.pack(">Q", len(data)), data]
    body = zlib.compress(b"".join(parts))
    return b"ZPE-REFERENCE-OUTDIR-1\n" + hashlib.sha256(body).digest() + body


def test_unpack_refuses_what_pwx_restart_files_are_not(tmp_path: Path) -> None:
    density = {"zpe.save/charge-density.dat": b"rho"}
    unpack_outdir(_blob(density), tmp_path / "ok", 1000)
    assert (tmp_path / "ok" / "zpe.save" / "charge-density.dat").read_bytes() == b"rho"
    bad = {
        "escape": {**density, "../../evil.dat": b"x"},
        "absolute": {**density, "/etc/evil.txt": b"x"},
        "nested": {**density, "zpe.save/sub/x.dat": b"x"},
        "other kind": {**density, "zpe.save/run.sh": b"x"},
        "no density": {"zpe.save/paw.txt": b"x"},
    }
    for why, files in bad.items():
        with pytest.raises(ShippedOutdirError):
            unpack_outdir(_blob(files), tmp_path / why.replace(" ", "-"), 1000)
    bomb = _blob({"zpe.save/charge-density.dat": b"\0" * 100_000})
    assert len(bomb) < 1000
    with pytest.raises(ShippedOutdirError, match="size cap"):
        unpack_outdir(bomb, tmp_path / "bomb", 1000)
    truncated = _blob(density)
    with pytest.raises(ShippedOutdirError, match="digest"):
        unpack_outdir(truncated[:-2], tmp_path / "cut", 1000)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "evil.dat").exists()


def test_pack_leaves_out_pseudopotentials_and_respects_the_cap(tmp_path: Path) -> None:
    out = _outdir(tmp_path / "ref", density="rho" * 100)
    (out / "zpe.save" / "link.dat").symlink_to("/etc/passwd")
    blob = pack_outdir(out, 10_000)
    assert blob is not None
    unpack_outdir(blob, tmp_path / "there", 10_000)
    shipped = sorted(p.name for p in (tmp_path / "there" / "zpe.save").iterdir())
    assert shipped == ["charge-density.dat"]
    assert pack_outdir(out, 100) is None  # 300 bytes of density do not fit in 100
