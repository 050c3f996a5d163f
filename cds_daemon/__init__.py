"""cds_daemon: thyroid FNAB cytology decision support beside a PACS.

BLAS threads are limited to one before anything imports numpy: the Mahalanobis matmul would otherwise
wake OpenBLAS's pool, whose threads keep spinning through the next ONNX Runtime run and take a core
from it (backbone 99-104 ms after a Mahalanobis call against 59 ms with one BLAS thread). The helper
process inherits the environment. ``cds_daemon.ops.threads.limit_blas_threads`` repeats the limit at
run time for a process that loaded numpy first. An operator's own setting is kept.
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
