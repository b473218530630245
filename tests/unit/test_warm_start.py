"""Warm starts of the qe engine without pw.x: the local cache, the namelists it
writes, falling back to a cold start, and the pseudopotential check."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from zpe_core.engines import get_engine
from zpe_core.engines.qe import QeEngine, WarmStartCache, _cpu_seconds, _prepare_input_data
from zpe_core.errors import EngineError
from zpe_core.models import QeCalcSpec, TaskSpec
from zpe_core.plan import pseudo_digest, task_key
from zpe_core.settings import Settings

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
    assert cold["electrons"] == {"startingwfc": "random", "conv_thr": 1e-10}
    assert _prepare_input_data(user, tmp_path, save=True)["control"]["disk_io"] == "low"
    warm = _prepare_input_data(user, tmp_path, warm=True)
    assert warm["electrons"] == {"conv_thr": 1e-10, "startingpot": "file"}
    both = _prepare_input_data(user, tmp_path, warm=True, warm_wfc=True)
    assert both["electrons"]["startingwfc"] == "file"
    assert user == {"electrons": {"startingwfc": "random", "conv_thr": 1e-10}}  # not mutated


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
    on = get_engine("qe", Settings(qe_version="v", scratch_dir=str(tmp_path)))
    assert isinstance(on, QeEngine) and on.warm_start_cache is not None
    assert on.warm_start_cache.root.parent == tmp_path
    off = get_engine("qe", Settings(qe_version="v", warm_start=False))
    assert isinstance(off, QeEngine) and off.warm_start_cache is None


def test_cpu_seconds_from_pwx_output() -> None:
    assert _cpu_seconds("     PWSCF        :      8.63s CPU     20.98s WALL\n") == 8.63
    assert _cpu_seconds("     PWSCF        :   2m 3.50s CPU      2m 5.00s WALL") == 123.5
    assert _cpu_seconds("     PWSCF        :   1h 2m 3.50s CPU   1h 3m WALL") == 3723.5
    assert _cpu_seconds("no timing here") is None
