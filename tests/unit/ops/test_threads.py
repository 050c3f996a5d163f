"""numpy's BLAS runs one thread in the daemon: set in the environment before numpy loads, and at run time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from cds_daemon.ops.threads import blas_threads, limit_blas_threads


def _fresh(code: str, env: dict[str, str]) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    return dict(json.loads(out.stdout))


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}


def test_importing_the_package_sets_one_blas_thread_unless_the_operator_chose() -> None:
    code = "import cds_daemon, numpy, json\nfrom cds_daemon.ops.threads import blas_threads\n"
    code += "print(json.dumps(blas_threads()))"
    limited = _fresh(code, _env())
    assert limited and set(limited.values()) == {1}
    chosen = _fresh(code, {**_env(), "OPENBLAS_NUM_THREADS": "2"})
    assert set(chosen.values()) == {2}  # an operator's own setting is kept


def test_run_time_limit_where_numpy_came_first() -> None:
    code = (
        "import numpy, json\n"
        "from threadpoolctl import threadpool_info\n"
        "before = max(p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas')\n"
        "from cds_daemon.ops.threads import blas_threads, limit_blas_threads\n"
        "limit_blas_threads()\n"
        "print(json.dumps({'before': before, **blas_threads()}))"
    )
    got = _fresh(code, _env())
    assert got.pop("before") == os.cpu_count()  # numpy loaded first: as many threads as cores
    assert set(got.values()) == {1}
    limit_blas_threads()
    assert np.ones(3) @ np.ones(3) == 3.0 and set(blas_threads().values()) <= {1}
