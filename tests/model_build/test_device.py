"""``--device``: CPU here (and in CI); CUDA where a GPU is usable, skipped elsewhere."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from model_build.demo import small_dataset, tiny_config
from model_build.device import amp_dtype, resolve_device
from model_build.run import train_run


def test_resolution() -> None:
    assert resolve_device("cpu") == "cpu" and amp_dtype("cpu") is None
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="one of auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"))],
)
def test_a_run_on_the_device_records_it(device: str, tmp_path: Path) -> None:
    data = small_dataset(tmp_path / "data", n_per_class=4, seed=9, size=(192, 256))
    cfg = dataclasses.replace(tiny_config(0), device="auto" if device == "cuda" else device)
    summary = train_run(data, tmp_path / "run", cfg, log=lambda _: None)
    assert 0.0 <= summary["macro_f1"] <= 1.0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["device"] == device
    state = torch.load(tmp_path / "run" / "backbone.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in state.values())  # exported from CPU weights either way
