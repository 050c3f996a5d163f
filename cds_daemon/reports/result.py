"""What the inference worker hands to the report builders: one image's AI result."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cds_daemon.common.vocabulary import ReferralReason, ReviewDecision


@dataclass(frozen=True)
class AIResult:
    """One image's ensemble result. ``validate`` keeps a malformed result from reaching the PACS."""

    classes: tuple[str, ...]
    display_names: tuple[str, ...]
    probabilities: tuple[float, ...]
    predicted: str
    conformal_set: tuple[str, ...]
    referred: bool
    reasons: tuple[str, ...]
    reason_texts: tuple[str, ...]
    model_name: str
    model_version: str
    model_sha256: str
    cam: np.ndarray | None = field(compare=False)
    basic_probabilities: tuple[float, ...] | None = None
    premium_probabilities: tuple[float, ...] | None = None
    finalisation_rule: str | None = None  # finalised without review: the rule that did it, as one line of text

    def __post_init__(self) -> None:
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be non-empty and distinct: {self.classes}")
        if len(self.display_names) != len(self.classes):
            raise ValueError("display_names must match classes in length")

    def validate(self) -> None:
        """Raise ValueError unless this is a complete model output, as the AI SR, heatmap and KOS need.

        Not done on construction: a result rebuilt from the store for a review (no CAM, maybe no
        AI class for an image the quality gate stopped) is still a valid AIResult.
        """
        n = len(self.classes)
        if len(self.probabilities) != n:
            raise ValueError("probabilities must match classes in length")
        for name, probs in (("basic", self.basic_probabilities), ("premium", self.premium_probabilities)):
            if probs is not None and len(probs) != n:
                raise ValueError(f"{name}_probabilities must match classes in length")
        if any(math.isnan(p) or not 0.0 <= p <= 1.0 for p in self.probabilities):
            raise ValueError(f"probabilities must lie in [0, 1]: {self.probabilities}")
        if abs(sum(self.probabilities) - 1.0) > 1e-3:
            raise ValueError(f"probabilities must sum to 1: {self.probabilities}")
        if self.predicted not in self.classes:
            raise ValueError(f"predicted {self.predicted!r} is not one of {self.classes}")
        if not set(self.conformal_set) <= set(self.classes):
            raise ValueError(f"conformal_set {self.conformal_set} has unknown classes")
        if len(self.reason_texts) != len(self.reasons):
            raise ValueError("reason_texts must match reasons in length")
        if self.cam is not None and np.asarray(self.cam).ndim != 2:
            raise ValueError(f"cam must be a 2-D map, got shape {np.asarray(self.cam).shape}")

    @property
    def analysed(self) -> bool:
        """False for the result of an image the AI could not analyse (no class, no probabilities)."""
        return ReferralReason.NOT_ANALYSED not in self.reasons

    def probability(self, cls: str) -> float:
        """Calibrated ensemble probability of one class."""
        return float(self.probabilities[self.classes.index(cls)])

    def display_name(self, cls: str) -> str:
        return self.display_names[self.classes.index(cls)]

    def final_class(self, decision: str, final_class: str | None) -> str | None:
        """The reviewer's class for ``decision`` on this result, after checking that the two fit together.

        The one rule for the review page, the CLI and the review SR; raises ValueError saying what is wrong.
        """
        if decision not in {str(d) for d in ReviewDecision}:
            raise ValueError(f"decision must be one of {', '.join(ReviewDecision)}, got {decision!r}")
        ai_class = self.predicted if self.predicted in self.classes else None
        if decision == ReviewDecision.NON_DIAGNOSTIC:
            if final_class is not None:
                raise ValueError("a non-diagnostic decision has no class")
            return None
        if decision == ReviewDecision.CONFIRM:
            if ai_class is None:
                raise ValueError("there is no AI class to confirm")
            if final_class not in (None, ai_class):
                raise ValueError("confirm keeps the AI class: use decision 'change' for another class")
            return ai_class
        if final_class not in self.classes:
            raise ValueError(f"change needs --class, one of {', '.join(self.classes)}")
        if final_class == ai_class:
            raise ValueError(f"{final_class} is the AI class: use decision 'confirm'")
        return final_class

    @property
    def model_label(self) -> str:
        """Model name and version ("ThyroidEffi 0.1.0+demo") as descriptions and burned-in text show it."""
        return f"{self.model_name} {self.model_version}"
