"""Throughput benchmark for the generators and wrappers (printed, never asserted in tests).

Rates are given per wall-clock second and per CPU second of this (single-threaded,
pinned) process; on a shared machine the CPU-second figure is the capacity of one core.
"""

import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from .synth import BAD_KINDS, CLASSES, make_bad_field, make_field, warm_up
from .wrap import TRANSFER_SYNTAXES, wrap_image

TARGET_IMAGES_PER_S = 20.0


@dataclass(frozen=True)
class Rate:
    wall: float  # items per wall-clock second
    cpu: float  # items per CPU second of this process

    def __str__(self) -> str:
        return f"{self.cpu:6.1f}/CPU-s {self.wall:6.1f}/s wall"


def measure(fn: Callable[[int], object], n: int) -> Rate:
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    return Rate(n / (time.perf_counter() - wall), n / max(time.process_time() - cpu, 1e-9))


def pin_to_one_cpu() -> str:
    """Restrict this process to one CPU so the numbers mean 'one core'."""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity)"


def run_bench(n_per_class: int = 10, seed: int = 0, pin: bool = True, print_fn: Callable[[str], None] = print) -> Rate:
    """Print make_field throughput at 768x1024 and related timings; return the overall rate.

    ``pin`` restricts the whole calling process to one CPU (it stays pinned afterwards).
    """
    pinned = pin_to_one_cpu() if pin else "not pinned"
    print_fn(f"dicom_fixtures bench: single process, {pinned}, load average {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    warm_up()
    print_fn(f"  warm-up of stamp banks and noise tiles (once per process): {time.perf_counter() - start:.2f} s")

    per_class = {label: measure(lambda i, label=label: make_field(label, seed + i), n_per_class) for label in CLASSES}
    n = n_per_class * len(CLASSES)
    overall = Rate(
        n / sum(1 / r.wall * n_per_class for r in per_class.values()),
        n / sum(1 / r.cpu * n_per_class for r in per_class.values()),
    )
    verdict = "OK" if overall.cpu >= TARGET_IMAGES_PER_S else "BELOW TARGET"
    print_fn(f"  make_field 768x1024, {n} images: {overall}  (target >= {TARGET_IMAGES_PER_S:.0f}/CPU-s: {verdict})")
    for label, rate in per_class.items():
        print_fn(f"    {label:<14s} {rate}")
    for kind in BAD_KINDS:
        print_fn(f"  make_bad_field {kind:<13s} {measure(lambda i, kind=kind: make_bad_field(kind, seed + i), 3)}")
    field = make_field("benign", seed)

    def encode(i: int, ts: str) -> None:
        wrap_image(field, "vl-microscopic", ts, seed=i).save_as(io.BytesIO(), enforce_file_format=True)

    for ts in TRANSFER_SYNTAXES:
        print_fn(f"  wrap_image + save vl-microscopic/{ts:<13s} {measure(lambda i, ts=ts: encode(i, ts), 3)} files")
    return overall
