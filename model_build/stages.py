"""The paper's five training view sets and their curriculum order (no torch here, so the CLI stays light).

Per training image: A = whole field, B = field with detected cell clusters in focus, C = 8 cluster
crops, D = the 12 grid tiles of B, E = the 12 grid tiles of A (34 views). The curriculum runs local,
noisy views first and the whole field last: E -> D -> C -> B -> A.
"""

from __future__ import annotations

from cds_daemon.analysis.tiles import GRID

STAGES = ("E_grid", "D_focus_grid", "C_clusters", "B_focus", "A_whole")
N_CLUSTERS = 8
STAGE_REGIONS = {"E_grid": GRID[0] * GRID[1], "D_focus_grid": GRID[0] * GRID[1], "C_clusters": N_CLUSTERS}


def regions_of(stage: str) -> int:
    """How many distinct views a stage offers per image (tiles, clusters, or 1)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    return STAGE_REGIONS.get(stage, 1)


FULL_PER_STAGE = {stage: regions_of(stage) for stage in STAGES}
