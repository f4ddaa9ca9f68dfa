"""`score` answers only for what it can score: predictions outside [0, 1] are refused (as NaN and inf are),
and its output into a closed pipe (`score ... | head -1`) ends quietly."""
from __future__ import annotations

import numpy as np
import pandas as pd

from melanoma import cli


def oof(tmp_path, pred) -> str:
    frame = pd.DataFrame({"image_name": [f"ISIC_{i}" for i in range(6)], "patient_id": [f"IP_{i}" for i in range(6)],
                          "target": [0, 1, 0, 1, 0, 1], "pred": pred, "fold": [0, 0, 0, 1, 1, 1]})
    path = tmp_path / "oof.csv"
    frame.to_csv(path, index=False)
    return str(path)


def test_predictions_outside_0_1_are_refused_naming_an_image(tmp_path, capsys):
    path = oof(tmp_path, [0.1, 1.7, 0.2, 0.9, -0.5, 0.8])
    assert cli.main(["score", path]) == 2
    err = capsys.readouterr().err
    assert "2 prediction(s) outside [0, 1]" in err and "ISIC_1 1.7" in err and "Traceback" not in err, err
    assert cli.main(["score", oof(tmp_path, np.linspace(0, 1, 6))]) == 0  # the bounds themselves are fine
