"""The FVC accuracy runner: protocol pairs, error rates, file naming, JSON output."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from benchmarks.fvc import error_rates, fvc_pairs, list_templates, main
from matcher.formats import encode_iso
from matcher.template import make_template

DATA = Path(
    os.environ.get("INK_DATA_DIR")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
ISO = DATA / "fvc2002-iso"


def test_protocol_pair_counts() -> None:
    keys = [str(f) for f in range(101, 111) for _ in range(8)]
    imps = [i for _ in range(10) for i in range(1, 9)]
    gen, imp = fvc_pairs(keys, imps, all_impostors=False)
    assert len(gen) == 10 * 28 and len(imp) == 45
    assert all(keys[i] == keys[j] for i, j in gen)
    assert all(imps[i] == 1 and imps[j] == 1 and keys[i] != keys[j] for i, j in imp)
    _gen, every = fvc_pairs(keys, imps, all_impostors=True)
    assert len(every) == 80 * 79 // 2 - 280
    assert all(i < j for i, j in every)


def test_error_rates_on_known_distributions() -> None:
    # separable: no errors anywhere
    r = error_rates(np.array([5.0, 6, 7]), np.array([1.0, 2, 3]))
    assert r == {"eer": 0.0, "fmr100": 0.0, "fmr1000": 0.0, "zerofmr": 0.0}
    # 1 of 10 genuine below every impostor, 1 of 10 impostors above every genuine
    gen = np.array([0.0] + [10.0] * 9)
    imp = np.array([20.0] + [1.0] * 9)
    r = error_rates(gen, imp)
    assert r["eer"] == pytest.approx(10.0)
    assert r["zerofmr"] == pytest.approx(100.0)  # only a threshold above 20 has FMR 0
    assert r["fmr100"] == pytest.approx(100.0)


def test_file_names(tmp_path: Path) -> None:
    t = make_template([10, 20, 30], [10, 40, 20], [0.1, 1, 2], width=64, height=64)
    for name in ("101_1.iso", "101_2.iso", "012_3_1.iso", "readme.txt", "101_x.iso"):
        (tmp_path / name).write_bytes(encode_iso(t))
    found = [(k, i, p.name) for k, i, p in list_templates(tmp_path)]
    assert found == [("012_3", 1, "012_3_1.iso"), ("101", 1, "101_1.iso"), ("101", 2, "101_2.iso")]


def _synthetic_folder(folder: Path) -> None:
    """Four fingers x three impressions: each impression a moved, jittered copy."""
    rng = np.random.default_rng(5)
    for f in range(4):
        n = 34
        x = rng.uniform(120, 330, n)
        y = rng.uniform(120, 330, n)
        a = rng.uniform(0, 2 * math.pi, n)
        for imp in range(1, 4):
            phi = rng.uniform(-0.3, 0.3)
            c, s = math.cos(phi), math.sin(phi)
            nx = 225 + (x - 225) * c + (y - 225) * s + rng.normal(0, 1.5, n) + rng.uniform(-15, 15)
            ny = 225 - (x - 225) * s + (y - 225) * c + rng.normal(0, 1.5, n) + rng.uniform(-15, 15)
            t = make_template(nx, ny, a + phi + rng.normal(0, 0.05, n), width=450, height=450)
            (folder / f"{101 + f}_{imp}.iso").write_bytes(encode_iso(t))


def test_json_output_on_synthetic_templates(tmp_path: Path, capsys) -> None:
    _synthetic_folder(tmp_path)
    assert main(["--templates", str(tmp_path), "--all-impostors", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["eer", "fmr100", "fmr1000", "zerofmr", "genuine", "impostor", "seconds"]
    assert out["genuine"] == 4 * 3 and out["impostor"] == 12 * 11 // 2 - 12
    assert out["eer"] == 0.0  # jittered copies of one print against unrelated prints
    assert main(["--templates", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["impostor"] == 6


def test_images_need_a_resolution(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--images", str(tmp_path)])


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.skipif(not ISO.is_dir(), reason="../shared/data/fvc2002-iso not present")
def test_fvc2002_db1_accuracy(capsys) -> None:
    """Regression guard on real templates: measured 1.85 % (target <= 3 % mean)."""
    assert main(["--templates", str(ISO / "DB1_B"), "--all-impostors", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["genuine"] == 280 and out["impostor"] == 2880
    assert out["eer"] < 3.0
