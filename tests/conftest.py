"""Shared fixtures: isolated data roots and a tiny synthetic dataset made by the project's own generator."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from smoothseg.synthetic.demo_dataset import make_demo_dataset


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point all smoothseg roots at a fresh temporary base folder."""
    for var in ("SMOOTHSEG_RAW", "SMOOTHSEG_PREPROCESSED", "SMOOTHSEG_RESULTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SMOOTHSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="session")
def demo_dataset_pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-case small synthetic dataset, generated once per session. Do not modify: copy it."""
    return make_demo_dataset(tmp_path_factory.mktemp("raw"), n_cases=6, seed=0, size="small")


@pytest.fixture
def demo_dataset(demo_dataset_pristine: Path, data_home: Path) -> Path:
    """A private copy of the synthetic dataset under this test's raw root."""
    target = data_home / "raw" / demo_dataset_pristine.name
    shutil.copytree(demo_dataset_pristine, target)
    return target
