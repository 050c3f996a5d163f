"""Training of the Premium aggregator on frozen backbone features of the 13 views.

The backbone is fixed, so the aggregator learns from pooled features, not from the backbone's logits.
Regularisation: dropout in the encoder, L2 weight decay, and tile-token dropout (random tile tokens
zeroed during training; the whole-field class token is kept). Early stopping on the model-selection
split's macro-F1 (lower NLL breaks ties), like the backbone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model_build.config import TrainConfig
from model_build.metrics import confusion_matrix, macro_f1
from model_build.models import PremiumAggregator
from model_build.train_basic import class_weights


@torch.inference_mode()
def aggregator_logits(model: nn.Module, tokens: np.ndarray, batch_size: int = 256) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.float32))
    out = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, 3), np.float32)


def train_aggregator(
    train_tokens: np.ndarray,
    train_labels: np.ndarray,
    selection_tokens: np.ndarray,
    selection_labels: np.ndarray,
    cfg: TrainConfig,
    *,
    log: Callable[[str], None] = tqdm.write,
) -> tuple[PremiumAggregator, list[dict[str, float]]]:
    """A trained aggregator (best selection weights) and its per-epoch history."""
    torch.manual_seed(cfg.seed + 1)
    model = PremiumAggregator(
        n_views=train_tokens.shape[1],
        feature_dim=train_tokens.shape[2],
        dim=cfg.agg_dim,
        layers=cfg.agg_layers,
        heads=cfg.agg_heads,
        dropout=cfg.agg_dropout,
    )
    device = cfg.device
    model.to(device)
    x = torch.from_numpy(np.ascontiguousarray(train_tokens, dtype=np.float32)).to(device)
    y = torch.from_numpy(np.asarray(train_labels, dtype=np.int64)).to(device)
    criterion = nn.CrossEntropyLoss(weight=class_weights(y.tolist(), model.config["n_classes"]).to(device))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.agg_lr, weight_decay=cfg.agg_weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    sel_y = np.asarray(selection_labels, dtype=np.int64)
    history: list[dict[str, float]] = []
    best: tuple[float, float] | None = None
    best_state, stale = copy.deepcopy(model.state_dict()), 0
    bar = tqdm(range(cfg.agg_epochs), desc="premium", leave=False, dynamic_ncols=True)
    for epoch in bar:
        model.train()
        losses = []
        for batch in torch.randperm(x.shape[0], generator=gen).split(cfg.agg_batch_size):
            batch = batch.to(device)
            xb = x[batch].clone()
            drop = (torch.rand(xb.shape[0], xb.shape[1], 1, generator=gen) < cfg.agg_token_dropout).to(device)
            drop[:, 0] = False
            xb = xb.masked_fill(drop, 0.0)
            loss = criterion(model(xb), y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if sel_y.size:
            logits = aggregator_logits(model, selection_tokens)
            f1 = macro_f1(confusion_matrix(sel_y, logits.argmax(1), logits.shape[1]))
            nll = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(sel_y)))
        else:
            f1, nll = float("nan"), float("nan")
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                "selection_macro_f1": f1,
                "selection_nll": nll,
            }
        )
        bar.set_postfix(loss=f"{np.mean(losses):.3f}", f1=f"{f1:.3f}")
        score = (f1, -nll)
        if np.isnan(f1) or best is None or score > best:
            best, stale = score, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= cfg.agg_patience:
                break
    model.load_state_dict(best_state)
    model.to("cpu").eval()  # exported and used from here on on the CPU
    last = history[-1]
    log(
        f"premium: {len(history)} epochs, best selection macro-F1 {best[0] if best else float('nan'):.4f}, "
        f"last train loss {last['train_loss']:.4f}"
    )
    return model, history
