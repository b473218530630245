"""Symmetry-reduced plans and warm starts, with real pw.x, in one run.

H2O, NH3 (samples/), CH4 and CO2 (ASE's geometries) in a 10 A box at low cutoffs,
each computed as a whole job through the ``http-pull`` mode: one API process
(``zpe serve``, file store) per variant and two ``zpe-worker pull`` processes
per variant, each with its own warm-start cache, as if on two machines:

  full-cold       request ``symmetry: off``, ZPE_WARM_START=0 on the workers
  full-warm       ``symmetry: off``, warm starts on: the reference's density reaches
                  the other worker through the API (GET/PUT .../reference-density)
  symmetric-cold  ``symmetry: auto`` (only the symmetry-independent points), cold
  symmetric-warm  ``symmetry: auto``, warm starts on

Per molecule the variants run one after another (the order reversed for every other
molecule), and every figure carries the load average (1 min) before and after it.
Printed: SCFs, SCF iterations, pw.x CPU (sum over tasks) and wall (submit -> done),
the largest |difference| of the counted frequencies against full-cold, and the share
of displaced points that started warm (and how many of those on the worker that did
not compute the reference).

    uv run python bench/warm_starts.py [--ecutwfc 20 --ecutrho 160] [--molecules ...]
        [--variants ...] [--scf-conv-thr-factor F] [--json FILE]

``--scf-conv-thr-factor`` sets ``zpe_core.engines.qe.SCF_CONV_THR_FACTOR`` in the
workers (default: the engine's own).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.servers import free_port, wait_until_up  # noqa: E402

PSEUDO_DIR = "/usr/share/espresso/pseudo"
ADMIN = "bench-admin-token-" + uuid.uuid4().hex
MOLECULES = ("h2o", "nh3", "ch4", "co2")
PSEUDOS = {
    "H": ("1.00794", "H.pbe-kjpaw.UPF"),
    "C": ("12.0107", "C.pbe-n-kjpaw_psl.0.1.UPF"),
    "N": ("14.0067", "N.pbe-kjpaw.UPF"),
    "O": ("15.9994", "O.pbe-kjpaw.UPF"),
}

VARIANTS: dict[str, tuple[bool, str]] = {  # name: (warm starts, request's symmetry)
    "full-cold": (False, "off"),
    "full-warm": (True, "off"),
    "symmetric-cold": (False, "auto"),
    "symmetric-warm": (True, "auto"),
}
WORKER_WITH_FACTOR = (
    "import os, sys; import zpe_core.engines.qe as qe; "
    "qe.SCF_CONV_THR_FACTOR = float(os.environ['BENCH_SCF_CONV_THR_FACTOR']); "
    "from zpe_worker.cli import main; sys.exit(main(sys.argv[1:]))"
)


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def with_cutoffs(text: str, ecutwfc: float, ecutrho: float) -> str:
    text = re.sub(r"ecutwfc\s*=\s*[\d.]+", f"ecutwfc = {ecutwfc}", text)
    return re.sub(r"ecutrho\s*=\s*[\d.]+", f"ecutrho = {ecutrho}", text)


def molecule_input(name: str) -> str:
    """samples/<name>_zpe.in, or ASE's geometry of ``name`` centred in a 10 A box."""
    sample = ROOT / "samples" / f"{name}_zpe.in"
    if sample.exists():
        return sample.read_text()
    from ase.build import molecule

    atoms = molecule(name.upper())
    atoms.center()
    atoms.positions += 5.0 - atoms.positions.mean(axis=0)
    species = sorted(set(atoms.get_chemical_symbols()))
    lines = [
        f"! {name.upper()} (ase.build.molecule) in a 10 A cubic box, Gamma point.",
        "&CONTROL\n  calculation = 'scf'\n/",
        f"&SYSTEM\n  ibrav = 0\n  nat = {len(atoms)}\n  ntyp = {len(species)}",
        "  ecutwfc = 50.0\n  ecutrho = 400.0\n/",
        "&ELECTRONS\n  conv_thr = 1.0d-10\n/",
        "ATOMIC_SPECIES",
        *(f"  {s}  {PSEUDOS[s][0]}  {PSEUDOS[s][1]}" for s in species),
        "CELL_PARAMETERS angstrom",
        "  10.0 0.0 0.0\n  0.0 10.0 0.0\n  0.0 0.0 10.0",
        "ATOMIC_POSITIONS angstrom",
        *(
            f"  {a.symbol}  {a.position[0]:.6f}  {a.position[1]:.6f}  {a.position[2]:.6f}"
            for a in atoms
        ),
        "K_POINTS gamma",
    ]
    return "\n".join(lines) + "\n"


class Stack:
    """One API (http-pull, file store) and two pull workers with their own caches."""

    def __init__(
        self, workdir: Path, version: str, *, warm: bool, factor: float | None = None
    ) -> None:
        self.workdir = workdir
        self.store_url = f"file://{workdir / 'store'}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        base = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "ZPE_QE_VERSION": version,
            "ZPE_LEASE_SECONDS": "600",
            "ZPE_HEARTBEAT_SECONDS": "20",
        }
        api_env = {
            **base,
            "ZPE_STORE_URL": self.store_url,
            "ZPE_EXECUTION_MODE": "http-pull",
            "ZPE_ADMIN_TOKEN": ADMIN,
            "ZPE_DEFAULT_ENGINE": "qe",
            "ZPE_LEASE_POLL_MAX_SECONDS": "2",
        }
        self._spawn(
            "api", [sys.executable, "-m", "zpe_api.cli", "serve", "--port", str(self.port)], api_env
        )
        self.client = httpx.Client(base_url=self.url, timeout=60)
        # A loaded machine starts slowly.
        wait_until_up(f"{self.url}/readyz", log=workdir / "api.log", timeout=900, interval=0.3)
        for i in range(2):
            token = self.client.post(
                "/calc/zpe/compute/enroll-tokens",
                json={},
                headers={"Authorization": f"Bearer {ADMIN}"},
            ).json()["token"]
            worker_env = {
                **base,
                "ZPE_WARM_START": "1" if warm else "0",
                "ZPE_WARM_START_DIR": str(workdir / f"warm-{i}"),
                "ZPE_SCRATCH_DIR": str(workdir),
                "ZPE_PSEUDO_DIR": PSEUDO_DIR,
                "ZPE_PW_COMMAND": "pw.x",
            }
            worker_env.pop("ZPE_STORE_URL", None)
            # The factor is a module constant of the engine: set it in the worker's process.
            entry = ["-m", "zpe_worker.cli"] if factor is None else ["-c", WORKER_WITH_FACTOR]
            argv = [
                sys.executable, *entry, "pull",
                "--api", self.url,
                "--token-file", str(workdir / f"w{i}.token.json"),
                "--enroll-token", token,
                "--name", f"w{i}",
                "--engines", "qe",
                "--poll-wait", "1",
                "--idle-max", "0.5",
            ]  # fmt: skip
            if factor is not None:
                worker_env["BENCH_SCF_CONV_THR_FACTOR"] = repr(factor)
            self._spawn(f"w{i}", argv, worker_env)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        out = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - lives with the process
        self.procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT))

    def run_job(self, text: str, extra: dict[str, Any]) -> dict[str, Any]:
        """Submit, wait, and collect the figures of one job."""
        from zpe_core.store import open_store

        start = time.perf_counter()
        response = self.client.post("/calc/zpe/jobs", json={"input_text": text, **extra})
        if response.status_code != 201:
            raise RuntimeError(f"submit: {response.status_code} {response.text}")
        job_id = response.json()["job_id"]
        while True:
            status = self.client.get(f"/calc/zpe/jobs/{job_id}").json()
            if status["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.5)
        wall = time.perf_counter() - start
        if status["state"] != "done":
            raise RuntimeError(f"job {status['state']}: {status.get('error')}")
        result = self.client.get(f"/calc/zpe/jobs/{job_id}/result").json()
        store = open_store(self.store_url)
        job = store.get_job(job_id)
        assert job is not None
        tasks = []
        for ref in job.value.tasks:
            found = store.get_task(ref.task_id)
            assert found is not None and found.value.result is not None
            r = found.value.result
            tasks.append((ref.name, r))
        reference_worker = next(r.worker_id for name, r in tasks if name == "eq")
        displaced = [r for name, r in tasks if name != "eq"]
        return {
            "wall": wall,
            "scfs": len(tasks),
            "iterations": sum(r.scf_iterations or 0 for _, r in tasks),
            "cpu": sum(r.cpu_seconds or 0.0 for _, r in tasks),
            "counted": [m["frequency_cm"] for m in result["modes"] if m["counted"]],
            "symmetry": (
                f"{sym['spacegroup'] or '-'} {sym['points_computed']}/{sym['points_full']}"
                + (f" ({sym['reason']})" if sym.get("reason") else "")
                if (sym := result.get("symmetry"))
                else None
            ),
            "displaced": len(displaced),
            "warm": sum(r.warm_started for r in displaced),
            "warm_elsewhere": sum(
                r.warm_started and r.worker_id != reference_worker for r in displaced
            ),
        }

    def stop(self) -> None:
        self.client.close()
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ecutwfc", type=float, default=20.0)
    parser.add_argument("--ecutrho", type=float, default=160.0)
    parser.add_argument("--molecules", nargs="*", default=list(MOLECULES))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--scf-conv-thr-factor", type=float, default=None)
    parser.add_argument("--json", default=None, help="Also write the raw figures here.")
    args = parser.parse_args()
    from zpe_core.engines.qe import SCF_CONV_THR_FACTOR, detect_pw_version

    version = f"qe-{detect_pw_version('pw.x')}"
    factor = args.scf_conv_thr_factor
    variants = [(name, *VARIANTS[name]) for name in args.variants]
    print(
        f"symmetry and warm starts, real pw.x ({version}), ecutwfc={args.ecutwfc} "
        f"ecutrho={args.ecutrho} Ry, conv_thr 1e-10 (pw.x gets x"
        f"{SCF_CONV_THR_FACTOR if factor is None else factor:g}), delta 0.01 A, "
        f"http-pull with 2 single-core workers per variant, nproc={os.cpu_count()}; "
        f"load = 1-min load average",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="zpe-bench-warm-") as tmp:
        stacks: dict[str, Stack] = {}
        try:
            for name, warm, _ in variants:
                (Path(tmp) / name).mkdir()
                stacks[name] = Stack(Path(tmp) / name, version, warm=warm, factor=factor)
            for i, mol in enumerate(args.molecules):
                text = with_cutoffs(molecule_input(mol), args.ecutwfc, args.ecutrho)
                order = variants if i % 2 == 0 else variants[::-1]
                for name, _, symmetry in order:
                    before = load()
                    res = stacks[name].run_job(text, {"symmetry": symmetry})
                    res["load"] = f"{before} -> {load()}"
                    results.setdefault(mol, {})[name] = res
                    print(
                        f"  {mol:>4} {name:<15} {res['scfs']:3d} SCFs {res['iterations']:4d} it "
                        f"CPU {res['cpu']:7.1f} s wall {res['wall']:7.1f} s  "
                        f"warm {res['warm']}/{res['displaced']}  symmetry {res['symmetry']}  "
                        f"(load {res['load']})",
                        flush=True,
                    )
                    if args.json:
                        Path(args.json).write_text(json.dumps(results, indent=1))
        finally:
            for stack in stacks.values():
                stack.stop()

    print(
        "\n| molecule | variant | SCFs | SCF iterations | pw.x CPU s | wall s | "
        "max abs dfreq vs full-cold (cm^-1) | displaced warm (on the other worker) | load |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|---|")
    total_disp = total_warm = 0
    for mol, per in results.items():
        cold = per.get("full-cold")
        for name in [n for n in VARIANTS if n in per]:
            res = per[name]
            diff = (
                max(abs(a - b) for a, b in zip(res["counted"], cold["counted"], strict=True))
                if cold and len(res["counted"]) == len(cold["counted"])
                else float("nan")
            )
            share = f"{res['warm']}/{res['displaced']} ({res['warm_elsewhere']})"
            print(
                f"| {mol} | {name} | {res['scfs']} | {res['iterations']} | {res['cpu']:.1f} | "
                f"{res['wall']:.1f} | {diff:.3f} | {share} | {res['load']} |"
            )
            if name.endswith("-warm"):
                total_disp += res["displaced"]
                total_warm += res["warm"]
        for name, res in per.items():
            print(f"  {mol} {name}: counted {' '.join(f'{f:.3f}' for f in res['counted'])}")
    if total_disp:
        print(
            f"\nsplit-mode workers warm-started {total_warm}/{total_disp} displaced points "
            f"({total_warm / total_disp:.0%}; target >= 80 %)"
        )


if __name__ == "__main__":
    main()
