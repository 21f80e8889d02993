"""Data-parallel training with 2 CPU processes (gloo), as ``torchrun --nproc_per_node 2`` runs it."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from distributed_helpers import fixed_batch, gradient_worker, loss_fn, tiny_network, trainer_worker
from inference_helpers import shrink_plans

from smoothseg.training.distributed import DistributedContext, from_environment
from smoothseg.workflows.plan_and_preprocess import plan_and_preprocess


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_averaged_gradient_is_the_gradient_of_the_whole_batch(tmp_path: Path) -> None:
    mp.spawn(gradient_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    network = tiny_network()
    data, labels = fixed_batch()
    logits, _ = network(data)
    loss_fn()(logits, labels).backward()
    whole = {n: p.grad for n, p in network.named_parameters()}
    ranks = [torch.load(tmp_path / f"grad{r}.pt", weights_only=True) for r in (0, 1)]
    for name, grad in whole.items():
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0, msg=name)  # one all-reduce
        torch.testing.assert_close(ranks[0][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    weights = [torch.load(tmp_path / f"weights{r}.pt", weights_only=True) for r in (0, 1)]
    changed = False
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name  # the ranks stay identical after steps on different data
        changed |= not torch.equal(value, tiny_network().state_dict()[name])
    assert changed


def test_torchrun_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert from_environment() == DistributedContext(0, 0, 1) and not from_environment().enabled
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert from_environment() == DistributedContext(3, 1, 4)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(Exception, match="inconsistent"):
        from_environment()


def test_two_processes_train_one_model(demo_dataset: Path, data_home: Path, tmp_path: Path) -> None:
    shrink_plans(plan_and_preprocess(900).folder)
    out = tmp_path / "ranks"
    out.mkdir()
    mp.spawn(trainer_worker, args=(2, _free_port(), str(data_home), str(out)), nprocs=2, join=True)
    rank0, rank1 = ((out / f"rank{r}.txt").read_text() for r in (0, 1))
    assert rank0 == rank1  # identical weights and identical TLVR weak labels on both ranks
    assert int(rank0.split()[1]) > 0
    fold = data_home / "results" / "Dataset900_SyntheticLiver" / "SmoothSegTrainer__tumor" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    log = (fold / "training_log.txt").read_text()
    assert "2 processes, batch 2 per process = 4 per step" in log
    assert log.count("epoch 1:") == 1  # only rank 0 writes the log
    assert json.loads((fold / "run_config.json").read_text())["world_size"] == 2
