"""`t2tedge info` params and MACs agree with Table 4 / the official figures within 5%."""

from __future__ import annotations

import json

import pytest

from t2tedge.cli import main

EXPECTED = {  # params (M), MACs (G)
    "t2t_vit_7": (4.31, 1.1),
    "t2t_vit_12": (6.94, 1.8),
    "mobilenet_v1_100": (4.23, 0.57),
    "mobilenet_v2_100": (3.50, 0.30),
    "mobilenet_v2_140": (6.1, 0.58),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_info_matches_paper(name, capsys):
    assert main(["info", name, "--json", "-"]) == 0
    info = json.loads(capsys.readouterr().out)
    params_m, macs_g = EXPECTED[name]
    assert info["params"] / 1e6 == pytest.approx(params_m, rel=0.05)
    assert info["macs"] / 1e9 == pytest.approx(macs_g, rel=0.05)


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["info", "t2t_vit_99"]) == 2  # a name that names nothing is usage
    assert "unknown model 't2t_vit_99'" in capsys.readouterr().err
