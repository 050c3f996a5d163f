"""Training loop of the Basic model (EfficientNet-B0 on single views) with early stopping.

Weighted cross-entropy (inverse class frequency of the training images) with label smoothing 0.1 (as
in the usual EfficientNet recipe; it also keeps logits in a range where float32 inference is exact to
1e-4), Adam with L2 weight decay, classifier dropout. After each epoch the whole-field view of the
model-selection split is scored and the weights with the best macro-F1 (lower NLL breaks ties) are
kept; training stops after ``patience`` epochs without improvement, or when the optional time budget
is spent (the current epoch then skips to its whole-field items, so training still ends on whole
fields). The calibration split is never touched here.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cds_daemon.analysis.tiles import INPUT_SIZE, crop_resize, normalize
from model_build.config import TrainConfig
from model_build.curriculum import CurriculumSampler
from model_build.dataset import read_rgb
from model_build.device import autocast, grad_scaler
from model_build.metrics import confusion_matrix, macro_f1
from model_build.training_views import TrainViews

StepHook = Callable[[torch.Tensor, torch.Tensor], None]


@dataclass
class EpochLog:
    epoch: int
    steps: int
    train_loss: float
    selection_macro_f1: float
    selection_nll: float
    seconds: float


def class_weights(labels: list[int], n_classes: int) -> torch.Tensor:
    """n / (K * n_k) per class (0 for a class absent from training)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    w = np.divide(len(labels), n_classes * counts, out=np.zeros(n_classes), where=counts > 0)
    return torch.tensor(w, dtype=torch.float32)


def whole_views(paths: list[Path], input_size: int = INPUT_SIZE) -> torch.Tensor:
    """View 0 (the whole field, as the daemon builds it) of each image: (N, 3, S, S)."""
    if not paths:
        return torch.empty(0, 3, input_size, input_size)
    pix = np.stack([crop_resize(Image.fromarray(read_rgb(p)), None, input_size) for p in paths])
    return torch.from_numpy(normalize(pix))


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, 3), np.float32)


def _selection_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    if x.shape[0] == 0:
        return float("nan"), float("nan")
    logits = torch.from_numpy(predict_logits(model, x))
    nll = float(nn.functional.cross_entropy(logits, y))
    cm = confusion_matrix(y.numpy(), logits.argmax(1).numpy(), logits.shape[1])
    return macro_f1(cm), nll


def freeze_early_layers(model: nn.Module, n_blocks: int) -> list[nn.Module]:
    """Freeze the stem and the first ``n_blocks`` stages of a timm EfficientNet; returns the frozen modules.

    With ImageNet weights the early stages already compute generic edges and textures; training only
    the later stages costs about a third of full fine-tuning on a CPU and overfits less on a few
    hundred fields.
    """
    if n_blocks <= 0:
        return []
    frozen: list[nn.Module] = [model.conv_stem, model.bn1, *list(model.blocks)[:n_blocks]]
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
    return frozen


def train_backbone(
    model: nn.Module,
    views: TrainViews,
    sampler: CurriculumSampler,
    selection_x: torch.Tensor,
    selection_y: torch.Tensor,
    cfg: TrainConfig,
    *,
    on_step: StepHook | None = None,
    log: Callable[[str], None] = tqdm.write,
) -> list[EpochLog]:
    """Train in place; ``on_step(labels, stage_indices)`` sees each batch just before its optimiser step.

    Leaves ``model`` holding the best selection-split weights (the last ones if there is no selection data).
    """
    loader = DataLoader(views, batch_size=cfg.batch_size, sampler=sampler, shuffle=False, num_workers=0)
    n_classes = int(model.get_classifier().out_features)
    device = cfg.device
    model.to(device)
    weights = class_weights(views.labels, n_classes).to(device)
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    scaler = grad_scaler(device)
    frozen = freeze_early_layers(model, cfg.freeze_blocks)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = _schedule(opt, cfg, len(sampler))
    history: list[EpochLog] = []
    best: tuple[float, float] | None = None
    best_state = copy.deepcopy(model.state_dict())
    stale, steps = 0, 0
    t_start = time.perf_counter()
    out_of_time = False
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        views.set_epoch(epoch)
        model.train()
        for module in frozen:
            module.eval()  # frozen layers keep their ImageNet batch-norm statistics too
        losses = []
        bar = tqdm(loader, desc=f"basic epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
        for x, y, stage in bar:
            with autocast(device):
                loss = criterion(model(x.to(device)).float(), y.to(device))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if on_step is not None:
                on_step(y, stage)
            scaler.step(opt)
            scaler.update()
            if schedule is not None:
                schedule.step()
            steps += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
            budget = cfg.time_budget_s
            if not out_of_time and budget is not None and time.perf_counter() - t_start > budget:
                out_of_time = True
                sampler.request_finish()
                log(f"basic: {cfg.time_budget_s:.0f} s budget spent; finishing this epoch on whole fields only")
        f1, nll = _selection_scores(model, selection_x, selection_y)
        entry = EpochLog(
            epoch + 1,
            steps,
            float(np.mean(losses)) if losses else float("nan"),
            f1,
            nll,
            time.perf_counter() - t0,
        )
        history.append(entry)
        log(
            f"basic epoch {entry.epoch}: loss {entry.train_loss:.4f}  selection macro-F1 {f1:.4f}  "
            f"NLL {nll:.4f}  ({entry.seconds:.0f} s, {steps} steps)"
        )
        score = (f1, -nll)
        if np.isnan(f1) or best is None or score > best:
            best, stale = score, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        if out_of_time or stale >= cfg.patience or (cfg.max_steps is not None and steps >= cfg.max_steps):
            break
    model.load_state_dict(best_state)
    model.eval()
    return history


def _schedule(
    opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Cosine decay of the learning rate to 0 over ``cfg.epochs`` epochs (stepped per batch), or none."""
    if cfg.lr_schedule == "constant":
        return None
    if cfg.lr_schedule != "cosine":
        raise ValueError(f"lr_schedule must be constant or cosine, got {cfg.lr_schedule!r}")
    total = max(1, cfg.epochs * max(1, -(-steps_per_epoch // cfg.batch_size)))
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)


def history_json(history: list[EpochLog]) -> list[dict[str, float]]:
    return [asdict(h) for h in history]
