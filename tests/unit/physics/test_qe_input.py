"""Unit tests for zpe_core.physics.qe_input: every accepted form and every rejection code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ase.units import Bohr

from zpe_core.errors import InputError, InputTooLarge
from zpe_core.physics.qe_input import (
    MAX_INPUT_BYTES_DEFAULT,
    ParsedInput,
    force_scf,
    parse_qe_input,
    select_mobile,
)

SAMPLES = Path(__file__).resolve().parents[3] / "samples"

SPECIES_H = "ATOMIC_SPECIES\n  H 1.008 H.pbe-kjpaw.UPF\n"
CELL_10 = "CELL_PARAMETERS angstrom\n 10 0 0\n 0 10 0\n 0 0 10\n"
POS_H2 = "ATOMIC_POSITIONS angstrom\n H 5.0 5.0 4.625\n H 5.0 5.0 5.375\n"


def make_input(
    *,
    control: str = "  calculation = 'scf'\n",
    system: str = "  ibrav = 0, nat = 2, ntyp = 1, ecutwfc = 50, ecutrho = 400\n",
    extra_namelists: str = "",
    species: str = SPECIES_H,
    cell: str = CELL_10,
    positions: str = POS_H2,
    kpoints: str = "K_POINTS gamma\n",
) -> str:
    """An H2 input whose parts can be swapped one at a time."""
    return (
        f"&CONTROL\n{control}/\n&SYSTEM\n{system}/\n&ELECTRONS\n  conv_thr = 1d-10\n/\n"
        f"{extra_namelists}{species}{cell}{positions}{kpoints}"
    )


def distance(parsed: ParsedInput, i: int, j: int) -> float:
    return float(np.linalg.norm(parsed.atoms.positions[i] - parsed.atoms.positions[j]))


def expect_error(text: str, code: str, phrase: str, **kwargs: int) -> InputError:
    with pytest.raises(InputError) as info:
        parse_qe_input(text, **kwargs)
    assert info.value.code == code, info.value.message
    assert phrase.lower() in info.value.message.lower()
    assert str(info.value) == info.value.message
    return info.value


# --- valid inputs ---------------------------------------------------------------------


def test_minimal_h2_gamma() -> None:
    parsed = parse_qe_input(make_input())
    assert isinstance(parsed, ParsedInput)
    assert list(parsed.atoms.symbols) == ["H", "H"]
    np.testing.assert_allclose(parsed.atoms.positions, [[5, 5, 4.625], [5, 5, 5.375]])
    np.testing.assert_allclose(parsed.atoms.cell[:], np.eye(3) * 10)
    assert parsed.atoms.pbc.all()
    assert parsed.atoms.constraints == []
    assert parsed.species == {"H": "H.pbe-kjpaw.UPF"}
    assert parsed.masses == {"H": pytest.approx(1.008)}
    assert parsed.labels == ["H", "H"]
    assert parsed.kpts is None
    assert parsed.koffset == (0, 0, 0)
    assert parsed.fixed_indices == []
    assert parsed.partially_fixed_indices == []
    assert parsed.pseudo_dir is None
    assert parsed.input_data["system"] == {"ecutwfc": 50, "ecutrho": 400}
    assert parsed.input_data["electrons"] == {"conv_thr": pytest.approx(1e-10)}


def test_cell_parameters_bohr() -> None:
    cell = "CELL_PARAMETERS bohr\n 20 0 0\n 0 20 0\n 0 0 20\n"
    parsed = parse_qe_input(make_input(cell=cell))
    np.testing.assert_allclose(parsed.atoms.cell.lengths(), [20 * Bohr] * 3)


def test_cell_parameters_alat_with_celldm() -> None:
    system = "  ibrav = 0, celldm(1) = 20.0, nat = 2, ntyp = 1, ecutwfc = 50\n"
    cell = "CELL_PARAMETERS alat\n 1 0 0\n 0 1 0\n 0 0 0.5\n"
    parsed = parse_qe_input(make_input(system=system, cell=cell))
    np.testing.assert_allclose(parsed.atoms.cell.lengths(), [20 * Bohr, 20 * Bohr, 10 * Bohr])
    assert "celldm(1)" not in parsed.input_data["system"]


def test_cell_parameters_without_unit_is_bohr() -> None:
    cell = "CELL_PARAMETERS\n 20 0 0\n 0 20 0\n 0 0 20\n"
    parsed = parse_qe_input(make_input(cell=cell))
    np.testing.assert_allclose(parsed.atoms.cell.lengths(), [20 * Bohr] * 3)


def test_lattice_parameter_a_in_angstrom_is_honoured() -> None:
    # ASE itself ignores A (it looks for 'A' after lower-casing the keys).
    system = "  ibrav = 0, A = 8.0, nat = 2, ntyp = 1, ecutwfc = 50\n"
    cell = "CELL_PARAMETERS alat\n 1 0 0\n 0 1 0\n 0 0 1.25\n"
    parsed = parse_qe_input(make_input(system=system, cell=cell))
    np.testing.assert_allclose(parsed.atoms.cell.lengths(), [8.0, 8.0, 10.0])
    assert "a" not in parsed.input_data["system"]


def test_ibrav_1_celldm() -> None:
    system = "  ibrav = 1, celldm(1) = 18.0, nat = 2, ntyp = 1, ecutwfc = 50\n"
    parsed = parse_qe_input(make_input(system=system, cell=""))
    np.testing.assert_allclose(parsed.atoms.cell[:], np.eye(3) * 18.0 * Bohr)
    assert "ibrav" not in parsed.input_data["system"]


def test_ibrav_2_fcc_with_crystal_positions() -> None:
    system = "  ibrav = 2, celldm(1) = 10.2, nat = 2, ntyp = 1, ecutwfc = 30\n"
    species = "ATOMIC_SPECIES\n Si 28.086 Si.pbe-rrkj.UPF\n"
    positions = "ATOMIC_POSITIONS crystal\n Si 0.0 0.0 0.0\n Si 0.25 0.25 0.25\n"
    parsed = parse_qe_input(
        make_input(system=system, cell="", species=species, positions=positions)
    )
    a = 10.2 * Bohr
    np.testing.assert_allclose(
        parsed.atoms.cell[:], [[-a / 2, 0, a / 2], [0, a / 2, a / 2], [-a / 2, a / 2, 0]]
    )
    # (v1 + v2 + v3) / 4 with the QE fcc vectors
    np.testing.assert_allclose(parsed.atoms.positions[1], [-a / 4, a / 4, a / 4])
    assert parsed.atoms.cell.volume == pytest.approx(a**3 / 4)


def test_ibrav_2_with_a_keyword_and_alat_positions() -> None:
    system = "  ibrav = 2, A = 5.4, nat = 2, ntyp = 1, ecutwfc = 30\n"
    species = "ATOMIC_SPECIES\n Si 28.086 Si.pbe-rrkj.UPF\n"
    positions = "ATOMIC_POSITIONS alat\n Si 0.0 0.0 0.0\n Si 0.25 0.25 0.25\n"
    parsed = parse_qe_input(
        make_input(system=system, cell="", species=species, positions=positions)
    )
    assert parsed.atoms.cell.volume == pytest.approx(5.4**3 / 4)
    np.testing.assert_allclose(parsed.atoms.positions[1], [1.35, 1.35, 1.35])


def test_ibrav_8_orthorhombic() -> None:
    system = (
        "  ibrav = 8, celldm(1) = 10, celldm(2) = 1.5, celldm(3) = 2.0,"
        " nat = 2, ntyp = 1, ecutwfc = 50\n"
    )
    parsed = parse_qe_input(make_input(system=system, cell=""))
    np.testing.assert_allclose(parsed.atoms.cell.lengths(), [10 * Bohr, 15 * Bohr, 20 * Bohr])


def test_positions_in_bohr() -> None:
    positions = "ATOMIC_POSITIONS bohr\n H 0 0 0\n H 0 0 1.4\n"
    parsed = parse_qe_input(make_input(positions=positions))
    np.testing.assert_allclose(parsed.atoms.positions[1], [0, 0, 1.4 * Bohr])


def test_positions_in_crystal_with_ibrav_0() -> None:
    positions = "ATOMIC_POSITIONS {crystal}\n H 0.5 0.5 0.4625\n H 0.5 0.5 0.5375\n"
    parsed = parse_qe_input(make_input(positions=positions))
    np.testing.assert_allclose(parsed.atoms.positions, [[5, 5, 4.625], [5, 5, 5.375]])


def test_positions_accept_expressions_and_inline_comments() -> None:
    positions = "ATOMIC_POSITIONS angstrom\n H 5.0 5.0 4.625 ! first\n H 5.0 10/2 5.375\n"
    parsed = parse_qe_input(make_input(positions=positions))
    np.testing.assert_allclose(parsed.atoms.positions[1], [5, 5, 5.375])


@pytest.mark.parametrize(
    "header",
    ["K_POINTS automatic", "K_POINTS (automatic)", "K_POINTS {automatic}", "k_points AUTOMATIC"],
)
def test_kpoints_automatic_forms_keep_grid_and_shifts(header: str) -> None:
    parsed = parse_qe_input(make_input(kpoints=f"{header}\n  4 4 1 1 1 0\n"))
    assert parsed.kpts == (4, 4, 1)
    assert parsed.koffset == (1, 1, 0)


def test_kpoints_automatic_without_parentheses_is_not_gamma() -> None:
    # The seed system read this as 1x1x1 and dropped the shift.
    parsed = parse_qe_input(make_input(kpoints="K_POINTS automatic\n 3 2 1 0 1 0\n"))
    assert parsed.kpts == (3, 2, 1)
    assert parsed.koffset == (0, 1, 0)


@pytest.mark.parametrize("header", ["K_POINTS gamma", "K_POINTS (Gamma)", "K_POINTS {GAMMA}"])
def test_kpoints_gamma_forms(header: str) -> None:
    parsed = parse_qe_input(make_input(kpoints=f"{header}\n"))
    assert parsed.kpts is None
    assert parsed.koffset == (0, 0, 0)


def test_fixed_and_partially_fixed_flags() -> None:
    system = "  ibrav = 0, nat = 4, ntyp = 1, ecutwfc = 50\n"
    positions = (
        "ATOMIC_POSITIONS angstrom\n H 1 1 1 0 0 0\n H 2 2 2 1 1 1\n H 3 3 3 0 0 1\n H 4 4 4\n"
    )
    parsed = parse_qe_input(make_input(system=system, positions=positions))
    assert parsed.fixed_indices == [0]
    assert parsed.partially_fixed_indices == [2]
    assert parsed.atoms.constraints == []
    np.testing.assert_allclose(parsed.atoms.positions[3], [4, 4, 4])


def test_labels_keep_the_written_species_label() -> None:
    species = "ATOMIC_SPECIES\n H1 1.008 H.pbe-kjpaw.UPF\n D 2.014 H.pbe-kjpaw.UPF\n"
    system = "  ibrav = 0, nat = 2, ntyp = 2, ecutwfc = 50\n"
    positions = "ATOMIC_POSITIONS angstrom\n H1 5 5 4.625\n D 5 5 5.375\n"
    parsed = parse_qe_input(make_input(system=system, species=species, positions=positions))
    assert parsed.labels == ["H1", "D"]
    assert parsed.masses == {"H1": pytest.approx(1.008), "D": pytest.approx(2.014)}
    assert parsed.species == {"H1": "H.pbe-kjpaw.UPF", "D": "H.pbe-kjpaw.UPF"}
    # ASE cannot read 'D'; the element comes from the pseudopotential name, as in pw.x.
    assert list(parsed.atoms.symbols) == ["H", "H"]


def test_species_without_any_element_hint() -> None:
    species = "ATOMIC_SPECIES\n Q 1.0 pseudo.UPF\n"
    positions = "ATOMIC_POSITIONS angstrom\n Q 5 5 4.625\n Q 5 5 5.375\n"
    expect_error(make_input(species=species, positions=positions), "bad_card", "element")


def test_lowercase_cards_and_comments_are_read() -> None:
    text = (
        "! a comment\n&control\n calculation='scf' ! why\n/\n"
        "&system\n ibrav=0, nat=2, ntyp=1, ecutwfc=50 /\n"
        "atomic_species\n# comment line\n H 1.008 H.pbe-kjpaw.UPF\n\n"
        "cell_parameters angstrom\n 10 0 0\n 0 10 0\n 0 0 10\n"
        "atomic_positions angstrom\n H 5 5 4.625\n H 5 5 5.375\n"
        "k_points gamma\n"
    )
    parsed = parse_qe_input(text)
    assert list(parsed.atoms.symbols) == ["H", "H"]
    assert parsed.input_data["system"] == {"ecutwfc": 50}


def test_crlf_line_endings_and_byte_order_mark() -> None:
    parsed = parse_qe_input(
        "\ufeff" + make_input(kpoints="K_POINTS automatic\n 2 2 2 1 1 1\n").replace("\n", "\r\n")
    )
    assert parsed.kpts == (2, 2, 2)
    assert parsed.koffset == (1, 1, 1)
    np.testing.assert_allclose(parsed.atoms.positions[1], [5, 5, 5.375])


def test_constraints_card_is_accepted_and_dropped() -> None:
    text = make_input() + "CONSTRAINTS\n 1\n distance 1 2\n"
    assert len(parse_qe_input(text).atoms) == 2


# --- forcing an SCF with forces ---------------------------------------------------------


def test_relax_input_is_forced_to_scf_with_forces() -> None:
    control = (
        "  calculation = 'relax', outdir = './out', prefix = 'x', tprnfor = .false.\n"
        "  pseudo_dir = '/opt/pseudo', wfcdir = './w', restart_mode = 'restart'\n"
        "  disk_io = 'high', tstress = .true.\n"
    )
    extra = "&IONS\n  ion_dynamics = 'bfgs'\n/\n&CELL\n  cell_dynamics = 'bfgs'\n/\n"
    parsed = parse_qe_input(make_input(control=control, extra_namelists=extra))
    # tstress only costs time in an SCF for forces: dropped like the other non-physics keys.
    assert parsed.input_data["control"] == {"calculation": "scf", "tprnfor": True}
    assert "ions" not in parsed.input_data
    assert "cell" not in parsed.input_data
    assert parsed.pseudo_dir == "/opt/pseudo"


def test_force_scf_copies_and_creates_control() -> None:
    original: dict[str, dict[str, Any]] = {
        "SYSTEM": {"ecutwfc": 40, "ibrav": 0, "nat": 2, "ntyp": 1, "celldm(1)": 10.0},
        "IONS": {"ion_dynamics": "bfgs"},
    }
    forced = force_scf(original)
    assert forced == {
        "system": {"ecutwfc": 40},
        "control": {"calculation": "scf", "tprnfor": True},
    }
    assert original["SYSTEM"]["ibrav"] == 0  # the input is left untouched
    assert "IONS" in original


def test_namelist_values_are_plain_python() -> None:
    system = "  ibrav = 0, nat = 2, ntyp = 1, ecutwfc = 50, degauss = 1q-2, tot_charge = 1d-4\n"
    parsed = parse_qe_input(make_input(system=system))
    assert type(parsed.input_data["system"]["degauss"]) is float
    assert parsed.input_data["system"]["degauss"] == pytest.approx(1e-2)
    assert parsed.input_data["system"]["tot_charge"] == pytest.approx(1e-4)


def test_force_scf_is_idempotent() -> None:
    once = force_scf({"control": {"calculation": "md", "outdir": "/x"}})
    assert force_scf(once) == once == {"control": {"calculation": "scf", "tprnfor": True}}


# --- samples --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "symbols", "kpts", "fixed"),
    [
        ("h2_zpe.in", ["H", "H"], None, []),
        ("h2o_zpe.in", ["O", "H", "H"], None, []),
        ("co_zpe.in", ["C", "O"], None, []),
        ("nh3_zpe.in", ["N", "H", "H", "H"], None, []),
        ("cu_slab_co.in", ["Cu"] * 8 + ["C", "O"], (2, 2, 1), list(range(8))),
    ],
)
def test_samples_parse(
    name: str, symbols: list[str], kpts: tuple[int, int, int] | None, fixed: list[int]
) -> None:
    parsed = parse_qe_input((SAMPLES / name).read_text())
    assert list(parsed.atoms.symbols) == symbols
    assert parsed.kpts == kpts
    assert parsed.koffset == (0, 0, 0)
    assert parsed.fixed_indices == fixed
    assert parsed.pseudo_dir == "/usr/share/espresso/pseudo"
    assert parsed.input_data["control"]["calculation"] == "scf"
    assert all(Path("/x", p).name == p for p in parsed.species.values())
    # Molecules sit in a 10 A box.
    if kpts is None:
        np.testing.assert_allclose(parsed.atoms.cell.lengths(), [10.0] * 3, atol=1e-6)


def test_h2_sample_geometry() -> None:
    parsed = parse_qe_input((SAMPLES / "h2_zpe.in").read_text())
    assert distance(parsed, 0, 1) == pytest.approx(0.75)
    assert parsed.input_data["system"]["ecutwfc"] == 50
    assert parsed.input_data["system"]["ecutrho"] == 400
    assert parsed.species == {"H": "H.pbe-kjpaw.UPF"}


def test_slab_sample_mobile_default_is_the_adsorbate() -> None:
    parsed = parse_qe_input((SAMPLES / "cu_slab_co.in").read_text())
    assert select_mobile(parsed, None, max_mobile=10) == [8, 9]
    assert distance(parsed, 8, 9) == pytest.approx(1.15)


# --- malformed inputs -----------------------------------------------------------------


def test_empty_input() -> None:
    expect_error("  \n\t\n", "empty_input", "empty")


def test_binary_input() -> None:
    expect_error("&CONTROL\x00\x01\x02", "not_text", "not a text")


def test_undecodable_input() -> None:
    expect_error(b"&SYSTEM \xff".decode("utf-8", "surrogateescape"), "not_text", "not valid text")


def test_input_too_large_counts_utf8_bytes() -> None:
    text = make_input()
    with pytest.raises(InputTooLarge) as info:
        parse_qe_input(text, max_bytes=100)
    assert info.value.code == "input_too_large"
    assert "100-byte limit" in info.value.message
    # 3-byte characters: fewer characters than the cap, more bytes.
    comment = "! " + "€" * 400 + "\n"
    assert len(comment) < 500 < len(comment.encode())
    expect_error(comment + text, "input_too_large", "bytes", max_bytes=len(text) + 500)
    assert MAX_INPUT_BYTES_DEFAULT == 1024 * 1024
    expect_error("!" * (MAX_INPUT_BYTES_DEFAULT + 1), "input_too_large", "limit")


def test_missing_system_namelist() -> None:
    text = "&CONTROL\n calculation='scf'\n/\n" + SPECIES_H + CELL_10 + POS_H2 + "K_POINTS gamma\n"
    expect_error(text, "missing_namelist", "&SYSTEM")


@pytest.mark.parametrize(
    ("system", "phrase"),
    [
        ("  nat = 2, ntyp = 1, ecutwfc = 50\n", "must set ibrav"),
        ("  ibrav = 0, ntyp = 1, ecutwfc = 50\n", "must set nat"),
        ("  ibrav = 0, nat = 2, ecutwfc = 50\n", "must set ntyp"),
        ("  ibrav = 0, nat = 2, ntyp = 1\n", "must set ecutwfc"),
        ("  ibrav = 0, nat = 'two', ntyp = 1, ecutwfc = 50\n", "nat must be an integer"),
        ("  ibrav = 0, nat = 0, ntyp = 1, ecutwfc = 50\n", "nat must be at least 1"),
        ("  ibrav = 0, nat = 2, ntyp = 1, ecutwfc = -5\n", "ecutwfc must be a positive"),
        ("  ibrav = 0, nat = 2, ntyp = 1, ecutwfc = 50, ecutrho = 'x'\n", "ecutrho must be"),
    ],
)
def test_bad_system_values(system: str, phrase: str) -> None:
    expect_error(make_input(system=system), "bad_namelist", phrase)


def test_unclosed_namelist_names_the_card() -> None:
    text = make_input().replace("conv_thr = 1d-10\n/\n", "conv_thr = 1d-10\n")
    error = expect_error(text, "bad_namelist", "&ELECTRONS")
    assert "closing '/'" in error.message


def test_namelist_never_closed() -> None:
    expect_error(
        "&SYSTEM\n ibrav = 0, nat = 1, ntyp = 1, ecutwfc = 30\n", "bad_namelist", "not closed"
    )


def test_namelist_line_without_equals() -> None:
    expect_error(make_input(control="  calculation 'scf'\n"), "bad_namelist", "key = value")


def test_repeated_namelist() -> None:
    extra = "&CONTROL\n  calculation = 'relax'\n/\n"
    expect_error(make_input(extra_namelists=extra), "bad_namelist", "more than once")


def test_unknown_namelist() -> None:
    extra = "&INPUTPH\n  tr2_ph = 1e-14\n/\n"
    expect_error(make_input(extra_namelists=extra), "bad_namelist", "&INPUTPH")


def test_namelist_key_without_value() -> None:
    expect_error(make_input(control="  calculation =\n"), "bad_namelist", "no value")


@pytest.mark.parametrize(
    ("part", "card"),
    [("species", "ATOMIC_SPECIES"), ("positions", "ATOMIC_POSITIONS"), ("kpoints", "K_POINTS")],
)
def test_missing_cards(part: str, card: str) -> None:
    expect_error(make_input(**{part: ""}), "missing_block", f"{card} card is missing")


def test_missing_cell_parameters_with_ibrav_0() -> None:
    expect_error(make_input(cell=""), "missing_block", "CELL_PARAMETERS")


def test_unknown_species() -> None:
    positions = "ATOMIC_POSITIONS angstrom\n H 5 5 4.625\n X 5 5 5.375\n"
    expect_error(
        make_input(positions=positions),
        "unknown_species",
        "species 'X' that has no ATOMIC_SPECIES line (no pseudopotential)",
    )


def test_species_label_is_case_sensitive() -> None:
    positions = "ATOMIC_POSITIONS angstrom\n h 5 5 4.625\n H 5 5 5.375\n"
    expect_error(make_input(positions=positions), "unknown_species", "'h'")


@pytest.mark.parametrize(
    ("positions", "phrase"),
    [
        ("ATOMIC_POSITIONS angstrom\n H 5 5 4.625\n", "nat = 2 but ATOMIC_POSITIONS has 1"),
        (
            "ATOMIC_POSITIONS angstrom\n H 5 5 4\n H 5 5 5\n H 5 5 6\n",
            "nat = 2 but ATOMIC_POSITIONS has 3",
        ),
    ],
)
def test_nat_mismatch(positions: str, phrase: str) -> None:
    expect_error(make_input(positions=positions), "nat_mismatch", phrase)


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"positions": "ATOMIC_POSITIONS angstrom\n H 5 5\n H 5 5 5\n"}, "label x y z"),
        ({"positions": "ATOMIC_POSITIONS angstrom\n H 5 5 a\n H 5 5 5\n"}, "coordinate 'a'"),
        ({"positions": "ATOMIC_POSITIONS angstrom\n H 5 5 nan\n H 5 5 5\n"}, "not finite"),
        ({"positions": "ATOMIC_POSITIONS angstrom\n H 5 5 4 0 2 0\n H 5 5 5\n"}, "0 or 1"),
        ({"positions": "ATOMIC_POSITIONS parsec\n H 5 5 4\n H 5 5 5\n"}, "unit 'parsec'"),
        ({"positions": "ATOMIC_POSITIONS crystal_sg\n H 5 5 4\n H 5 5 5\n"}, "crystal_sg"),
        ({"positions": "ATOMIC_POSITIONS\n H 5 5 4\n H 5 5 5\n"}, "alat units"),
        ({"species": "ATOMIC_SPECIES\n H 1.008\n"}, "label mass pseudopotential"),
        ({"species": "ATOMIC_SPECIES\n H heavy H.UPF\n"}, "mass of species 'H'"),
        ({"species": "ATOMIC_SPECIES\n H 1 ../../etc/passwd\n"}, "plain file name"),
        ({"species": "ATOMIC_SPECIES\n H 1 H.UPF\n H 1 H.UPF\n"}, "ntyp = 1"),
        ({"cell": "CELL_PARAMETERS angstrom\n 10 0 0\n 0 10 0\n"}, "3 lines"),
        ({"cell": "CELL_PARAMETERS angstrom\n 10 0\n 0 10 0\n 0 0 10\n"}, "3 numbers"),
        ({"cell": "CELL_PARAMETERS angstrom\n 10 0 0\n 0 10 0\n 0 0 x\n"}, "'x'"),
        ({"cell": "CELL_PARAMETERS angstrom\n 10 0 0\n 10 0 0\n 0 0 10\n"}, "degenerate"),
        ({"cell": "CELL_PARAMETERS furlong\n 1 0 0\n 0 1 0\n 0 0 1\n"}, "unit 'furlong'"),
        ({"kpoints": "K_POINTS automatic\n 4 4\n"}, "six integers"),
        ({"kpoints": "K_POINTS automatic\n 4 4 1 0 0 2\n"}, "shifts 0 or 1"),
        ({"kpoints": "K_POINTS automatic\n 0 4 1 0 0 0\n"}, "nk >= 1"),
        ({"kpoints": "K_POINTS automatic\n"}, "exactly one line"),
        ({"kpoints": "K_POINTS gamma\n 1 1 1 0 0 0\n"}, "no data lines"),
        ({"kpoints": "K_POINTS gamma\nK_POINTS gamma\n"}, "more than once"),
        ({"kpoints": "K_POINTS gamma\nOCCUPATIONS\n 1 1\n"}, "OCCUPATIONS card is not supported"),
    ],
)
def test_bad_cards(kwargs: dict[str, str], phrase: str) -> None:
    expect_error(make_input(**kwargs), "bad_card", phrase)


@pytest.mark.parametrize(
    "kpoints",
    [
        "K_POINTS tpiba\n 1\n 0 0 0 1\n",
        "K_POINTS crystal\n 1\n 0 0 0 1\n",
        "K_POINTS\n 1\n 0 0 0 1\n",
        "K_POINTS crystal_b\n 1\n 0 0 0 1\n",
    ],
)
def test_unsupported_kpoints_forms(kpoints: str) -> None:
    error = expect_error(make_input(kpoints=kpoints), "bad_card", "is not supported")
    assert "K_POINTS gamma" in error.message
    assert "(automatic)" in error.message


def test_stray_line_before_the_first_card() -> None:
    text = make_input().replace("ATOMIC_SPECIES", "hello world\nATOMIC_SPECIES")
    expect_error(text, "bad_card", "outside any card")


def test_cell_parameters_bohr_conflicts_with_celldm() -> None:
    system = "  ibrav = 0, celldm(1) = 10, nat = 2, ntyp = 1, ecutwfc = 50\n"
    cell = "CELL_PARAMETERS bohr\n 20 0 0\n 0 20 0\n 0 0 20\n"
    expect_error(make_input(system=system, cell=cell), "bad_card", "given twice")


def test_cell_parameters_with_nonzero_ibrav() -> None:
    system = "  ibrav = 1, celldm(1) = 18, nat = 2, ntyp = 1, ecutwfc = 50\n"
    expect_error(make_input(system=system), "bad_card", "ibrav = 1")


@pytest.mark.parametrize(
    ("system", "phrase"),
    [
        ("  ibrav = 2, nat = 2, ntyp = 1, ecutwfc = 50\n", "needs celldm(1) or A"),
        ("  ibrav = 6, celldm(1) = 10, nat = 2, ntyp = 1, ecutwfc = 50\n", "celldm(3)"),
        ("  ibrav = 13, celldm(1) = 10, nat = 2, ntyp = 1, ecutwfc = 50\n", "not supported"),
        ("  ibrav = 1, celldm(1) = 10, A = 5, nat = 2, ntyp = 1, ecutwfc = 50\n", "both celldm"),
        ("  ibrav = 1, celldm(1) = -10, nat = 2, ntyp = 1, ecutwfc = 50\n", "positive"),
    ],
)
def test_bad_lattice(system: str, phrase: str) -> None:
    expect_error(make_input(system=system, cell=""), "bad_namelist", phrase)


def test_cell_parameters_alat_without_lattice_parameter() -> None:
    cell = "CELL_PARAMETERS alat\n 1 0 0\n 0 1 0\n 0 0 1\n"
    expect_error(make_input(cell=cell), "bad_namelist", "celldm(1) or A")


def test_pseudo_dir_must_be_a_string() -> None:
    expect_error(make_input(control="  pseudo_dir = 3\n"), "bad_namelist", "pseudo_dir")


# --- mobile atoms ---------------------------------------------------------------------


@pytest.fixture
def slab() -> ParsedInput:
    system = "  ibrav = 0, nat = 4, ntyp = 1, ecutwfc = 50\n"
    positions = (
        "ATOMIC_POSITIONS angstrom\n H 1 1 1 0 0 0\n H 2 2 2 0 0 0\n H 3 3 3 1 1 0\n H 4 4 4\n"
    )
    return parse_qe_input(make_input(system=system, positions=positions))


def test_select_mobile_default_is_every_atom_not_fixed(slab: ParsedInput) -> None:
    assert select_mobile(slab, None, max_mobile=10) == [2, 3]


def test_select_mobile_explicit_is_sorted(slab: ParsedInput) -> None:
    assert select_mobile(slab, [3, 2], max_mobile=10) == [2, 3]
    assert select_mobile(slab, [3], max_mobile=1) == [3]


@pytest.mark.parametrize(
    ("mobile", "code", "phrase"),
    [
        ([], "mobile_empty", "empty"),
        ([4], "mobile_out_of_range", "out of range"),
        ([-1], "mobile_out_of_range", "0-based"),
        ([2, 2], "mobile_duplicate", "more than once"),
        ([0, 3], "mobile_fixed", "[0]"),
        ([2, 3], "too_many_mobile", "limit is 1"),
    ],
)
def test_select_mobile_errors(slab: ParsedInput, mobile: list[int], code: str, phrase: str) -> None:
    with pytest.raises(InputError) as info:
        select_mobile(slab, mobile, max_mobile=1)
    assert info.value.code == code
    assert phrase in info.value.message


def test_select_mobile_default_respects_the_cap(slab: ParsedInput) -> None:
    with pytest.raises(InputError) as info:
        select_mobile(slab, None, max_mobile=1)
    assert info.value.code == "too_many_mobile"


def test_select_mobile_all_fixed() -> None:
    positions = "ATOMIC_POSITIONS angstrom\n H 5 5 4.625 0 0 0\n H 5 5 5.375 0 0 0\n"
    parsed = parse_qe_input(make_input(positions=positions))
    with pytest.raises(InputError) as info:
        select_mobile(parsed, None, max_mobile=10)
    assert info.value.code == "mobile_empty"
    assert "every atom is fixed" in info.value.message


def test_spin_polarised_inputs_are_refused_not_computed_wrongly() -> None:
    from zpe_core.errors import InputError

    text = (SAMPLES / "h2_zpe.in").read_text()
    for extra in ("nspin = 2", "noncolin = .true.", "starting_magnetization(1) = 0.5"):
        magnetic = text.replace("ntyp    = 1", f"ntyp    = 1\n  {extra}")
        with pytest.raises(InputError) as info:
            parse_qe_input(magnetic)
        assert info.value.code == "spin_polarized_unsupported", extra
    parse_qe_input(text.replace("ntyp    = 1", "ntyp    = 1\n  nspin = 1"))  # still fine
