"""``model_build demo-bundle`` builds the demo as ``model_build.demo`` defines it (a CLI default of its own
once made the README's demo train on a third of the data, with a calibration split too small to finalise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from model_build import demo
from model_build.__main__ import build_parser


def test_the_command_uses_the_demos_own_dataset_size(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []

    def fake_demo_bundle(out: Path, **kwargs: Any) -> Path:
        calls.append(kwargs)
        return out

    monkeypatch.setattr(demo, "demo_bundle", fake_demo_bundle)
    args = build_parser().parse_args(["demo-bundle", str(tmp_path / "b")])
    assert args.handler(args) == 0
    assert calls == [{"seed": 0, "n_per_class": demo.DEMO_PER_CLASS, "epochs": None, "device": "cpu"}]
    args = build_parser().parse_args(["demo-bundle", str(tmp_path / "b"), "--n-per-class", "50"])
    args.handler(args)
    assert calls[-1]["n_per_class"] == 50
