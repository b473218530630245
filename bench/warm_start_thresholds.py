"""Why warm starts moved frequencies: one molecule, the engine called directly,
every point computed for each variant, one after another on one core. A variant is

  ``LABEL:c|w:CONV_THR``   cold or warm; pw.x gets exactly CONV_THR for the displaced
                           points (the engine's ``SCF_CONV_THR_FACTOR`` switched off; the
                           reference of a warm variant at the task's own ``conv_thr``,
                           without that tightening), or
  ``LABEL:c|w:xFACTOR``    cold or warm with the engine's ``SCF_CONV_THR_FACTOR`` set to
                           FACTOR: every SCF, reference included, at conv_thr x FACTOR
                           (what a job gets with that factor).

    uv run python bench/warm_start_thresholds.py nh3 --ecutwfc 25 --ecutrho 200 \\
        cold10:c:1e-10 warm10:w:1e-10 warm12:w:1e-12
    uv run python bench/warm_start_thresholds.py nh3 --ecutwfc 20 --ecutrho 160 \\
        cold3:c:x1e-3 warm3:w:x1e-3

The molecule is ``samples/<name>_zpe.in`` or, for ch4 and co2, ASE's geometry in a
10 A box (as in bench/warm_starts.py).

Prints per variant: SCF iterations and pw.x CPU of the displaced points, the counted
frequencies, their difference from the first variant, and the largest force difference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from warm_starts import molecule_input, with_cutoffs  # noqa: E402

PSEUDO_DIR = "/usr/share/espresso/pseudo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("molecule", help="samples/<molecule>_zpe.in, or ch4 / co2")
    parser.add_argument("variants", nargs="+", help="LABEL:c|w:CONV_THR or LABEL:c|w:xFACTOR")
    parser.add_argument("--ecutwfc", type=float, default=25.0)
    parser.add_argument("--ecutrho", type=float, default=200.0)
    parser.add_argument("--json", default=None, help="Also write frequencies and forces here.")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"

    import zpe_core.engines.qe as qe
    from zpe_client.models import JobRequest, TaskSpec
    from zpe_core.physics.analysis import analyze
    from zpe_core.physics.plan import build_plan
    from zpe_core.physics.qe_input import parse_qe_input, select_mobile

    text = with_cutoffs(molecule_input(args.molecule), args.ecutwfc, args.ecutrho)
    parsed = parse_qe_input(text)
    request = JobRequest(input_text=text)
    mobile = select_mobile(parsed, None, max_mobile=64)
    plan = build_plan(
        parsed, mobile, request, engine="qe", engine_version="qe-b", pseudo_dir=PSEUDO_DIR
    )

    def at(spec: TaskSpec, conv_thr: float) -> TaskSpec:
        copy = spec.model_copy(deep=True)
        assert copy.qe is not None
        copy.qe.input_data.setdefault("electrons", {})["conv_thr"] = conv_thr
        return copy

    print(
        f"{args.molecule}, {len(plan.tasks)} points, ecutwfc={args.ecutwfc} "
        f"ecutrho={args.ecutrho} Ry; load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="zpe-bench-thr-") as tmp:
        for spec_text in args.variants:
            label, mode, conv = spec_text.split(":")
            warm = mode == "w"
            exact = not conv.startswith("x")
            # exact: the thresholds are exactly what pw.x gets; else the engine's factor.
            qe.SCF_CONV_THR_FACTOR = 1.0 if exact else float(conv[1:])
            cache = qe.WarmStartCache(Path(tmp) / f"cache-{label}") if warm else None
            engine = qe.QeEngine("pw.x", PSEUDO_DIR, 3600, version="qe-b", warm_start_cache=cache)
            forces: dict[str, Any] = {}
            iterations, cpu = 0, 0.0
            for i, planned in enumerate(plan.tasks):
                displaced = planned.displacement.name != "eq"
                spec = planned.spec
                if exact and (displaced or not warm):
                    spec = at(planned.spec, float(conv))
                result = engine.compute(spec, Path(tmp) / f"{label}-{i}")
                if displaced:
                    assert result.warm_started == warm
                    iterations += result.scf_iterations or 0
                    cpu += result.cpu_seconds or 0.0
                forces[planned.displacement.name] = result.forces_ev_per_a
            vib = analyze(parsed.atoms, mobile, request.delta, request.nfree, forces, 298.15, True)
            rows[label] = {
                "freqs": [m.frequency_cm for m in vib.modes if m.counted],
                "forces": forces,
                "iterations": iterations,
                "cpu": cpu,
            }
            first = next(iter(rows.values()))
            dfreq = [a - b for a, b in zip(rows[label]["freqs"], first["freqs"], strict=True)]
            dforce = max(
                float(np.abs(np.asarray(forces[n]) - np.asarray(first["forces"][n])).max())
                for n in forces
                if n != "eq"
            )
            print(
                f"{label:>8}: displaced {iterations} SCF iterations, pw.x CPU {cpu:.1f} s; "
                f"counted {' '.join(f'{f:.3f}' for f in rows[label]['freqs'])}; "
                f"vs {next(iter(rows))}: {' '.join(f'{d:+.3f}' for d in dfreq)} cm^-1, "
                f"max |dF| {dforce:.1e} eV/A (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
            if args.json:
                Path(args.json).write_text(json.dumps(rows, default=np.ndarray.tolist))


if __name__ == "__main__":
    main()
