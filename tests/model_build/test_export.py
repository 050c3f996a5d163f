"""ONNX export parity with torch, and CAM from the ONNX outputs equals torch autograd Grad-CAM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cds_daemon.analysis.engine import class_activation_maps, open_session, synthetic_field
from cds_daemon.analysis.tiles import make_views
from model_build.export import PARITY_TOLERANCE, parity
from model_build.models import BackboneOutputs, PremiumAggregator, create_backbone
from model_build.onnx_graphs import export_graphs

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[BackboneOutputs, PremiumAggregator, Path]:
    torch.manual_seed(0)
    model = create_backbone()
    with torch.no_grad():  # non-trivial BatchNorm statistics so the graph is not near-identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        model.get_classifier().weight.mul_(20)
    backbone = BackboneOutputs(model).eval()
    aggregator = PremiumAggregator().eval()
    out = tmp_path_factory.mktemp("onnx")
    export_graphs(backbone, aggregator, out)
    return backbone, aggregator, out


def test_onnx_runtime_matches_torch(exported: tuple[BackboneOutputs, PremiumAggregator, Path]) -> None:
    backbone, aggregator, out = exported
    diffs = parity(backbone, aggregator, out)
    assert diffs["backbone_logits"] < PARITY_TOLERANCE and diffs["aggregator_logits"] < PARITY_TOLERANCE
    sess = open_session(out / "backbone.onnx", threads=2)
    x = np.random.default_rng(0).normal(size=(3, 3, 224, 224)).astype(np.float32)  # dynamic batch of 3
    logits, pooled, fmap = sess.run(["logits", "pooled", "feature_map"], {"images": x})
    with torch.inference_mode():
        t_logits, t_pooled, t_fmap = (t.numpy() for t in backbone(torch.from_numpy(x)))
    assert logits.shape == (3, 3) and pooled.shape == (3, 1280) and fmap.shape == (3, 1280, 7, 7)
    assert np.abs(logits - t_logits).max() < 1e-4
    assert np.abs(t_logits).max() > 0.1  # the comparison is not between two near-zero outputs
    np.testing.assert_allclose(pooled, t_pooled, atol=1e-5)
    np.testing.assert_allclose(fmap, t_fmap, atol=1e-4)
    agg = open_session(out / "aggregator.onnx", threads=2)
    tokens = pooled[[0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0]][None]
    (o,) = agg.run(["logits"], {"tokens": tokens})
    with torch.inference_mode():
        assert np.abs(o - aggregator(torch.from_numpy(tokens)).numpy()).max() < 1e-4


def test_cam_from_onnx_equals_grad_cam(exported: tuple[BackboneOutputs, PremiumAggregator, Path]) -> None:
    backbone, _, out = exported
    views = make_views(synthetic_field())[:4]
    logits, fmap = open_session(out / "backbone.onnx", threads=2).run(["logits", "feature_map"], {"images": views})
    classifier = backbone.model.get_classifier()
    w = classifier.weight.detach().numpy()
    b = classifier.bias.detach().numpy()
    for c in range(3):
        cam = class_activation_maps(fmap, w[c])  # numpy, from ONNX outputs only
        np.testing.assert_allclose(cam.mean(axis=(1, 2)) + b[c], logits[:, c], atol=1e-4)
        # torch autograd Grad-CAM on the same post-activation map
        x = torch.from_numpy(views)
        a = backbone.model.forward_features(x)
        a.retain_grad()
        y = backbone.model.get_classifier()(a.mean(dim=(2, 3)))
        y[:, c].sum().backward()
        alpha = a.grad.mean(dim=(2, 3), keepdim=True)  # Grad-CAM weights: spatial mean of the gradient
        np.testing.assert_allclose(alpha[0, :, 0, 0].numpy(), w[c] / 49, rtol=1e-5, atol=1e-9)
        grad_cam = (alpha * a).sum(dim=1).detach().numpy()  # without Grad-CAM's ReLU
        scale = np.abs(grad_cam).max()
        assert np.abs(cam / 49 - grad_cam).max() < 1e-4 * scale
