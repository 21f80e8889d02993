"""nnU-Net muscle memory: its spellings work where they mean the same, its other flags get a one-line explanation,
and nothing is guessed from an abbreviation."""

from __future__ import annotations

import argparse

import pytest
from cli_helpers import run_cli

from smoothseg.cli import evaluate as evaluate_cli
from smoothseg.cli import predict as predict_cli
from smoothseg.cli import train as train_cli


def _parse(module, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    captured = []
    monkeypatch.setattr(module, "run", lambda parser, body, argv=None: captured.append(parser.parse_args(argv)) or 0)
    module.main(argv)
    return captured[0]


def test_nnunet_spellings_of_predict_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _parse(predict_cli, ["-i", "in", "-o", "out", "-step_size", "0.7", "-num_parts", "3", "-part_id", "2",
                                "-npp", "1", "-nps", "0", "--continue_prediction"], monkeypatch)
    assert (args.step_size, args.num_parts, args.part_id, args.npp, args.nps) == (0.7, 3, 2, 1, 0)
    assert args.continue_prediction


@pytest.mark.parametrize(("module", "argv", "words"), [
    (predict_cli, ["-i", "in", "-o", "out", "-c", "3d_fullres"], "-c is an nnU-Net option with no meaning"),
    (predict_cli, ["-i", "in", "-o", "out", "-p", "nnUNetPlans"], "plans.json"),
    (train_cli, ["7", "tumor", "0", "-pretrained_weights", "x.pth"], "-pretrained_weights is an nnU-Net option"),
    (evaluate_cli, ["-djfile", "dataset.json"], "give the dataset with -d DATASET"),
    (predict_cli, ["-i", "in", "-o", "out", "--step", "0.5"], "unrecognized arguments: --step"),
])
def test_nnunet_only_and_abbreviated_flags_are_refused_clearly(module, argv, words, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        module.main(argv)
    assert exc.value.code == 2
    assert words in capsys.readouterr().err


def test_evaluate_takes_the_folders_positionally_as_nnunet_does(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _parse(evaluate_cli, ["labelsTs", "predictions"], monkeypatch)
    assert args.folders == ["labelsTs", "predictions"]


def test_nnunet_environment_variables_are_not_silently_ignored(tmp_path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SMOOTHSEG_")}
    env.update(SMOOTHSEG_HOME=str(tmp_path), nnUNet_raw=str(tmp_path / "nnunet_raw"))
    result = subprocess.run([sys.executable, "-m", "smoothseg.cli.verify_dataset", "-d", "900"], capture_output=True,
                            text=True, env=env)
    assert "nnUNet_raw is set, but smoothseg reads SMOOTHSEG_RAW" in result.stderr


def test_evaluate_without_a_dataset_says_what_it_assumed(tmp_path) -> None:
    import numpy as np

    from smoothseg.dataset.io import Geometry, write_image

    labels = np.zeros((8, 8, 8), np.uint8)
    labels[2:6, 2:6, 2:6] = 1
    labels[3:5, 3:5, 3:5] = 2
    for folder in ("ref", "pred"):
        write_image(labels, Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), tmp_path / folder / "a.nii.gz")
    result = run_cli("evaluate", str(tmp_path / "ref"), str(tmp_path / "pred"), home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Reference labels assumed without -d: liver region [1, 2], tumour [2]" in result.stdout
    assert "Accuracy is kept for the paper's layout only" in result.stdout
