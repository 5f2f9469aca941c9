"""shmfetch: move large objects between object storage and memory as fast
as the storage allows.

A pool of worker processes fetches disjoint byte ranges of one object
(AIStore ``ais://``, S3 ``s3://``, any ``http(s)://`` server, local files)
straight into POSIX shared memory; Python gets the bytes through the buffer
protocol, without a copy::

    import numpy, shmfetch
    r = shmfetch.ParallelReader("ais://bucket/obj", workers=8)
    with r.read_all() as buf:
        a = numpy.frombuffer(buf, dtype=numpy.uint8)
    for chunk in r.create_iter(offset=0):
        consume(memoryview(chunk))

PyTorch Distributed Checkpoints: :mod:`shmfetch.dcp`.

Forking: the workers are forked from this process when a pool is created.
Forking from a process that imported torch is safe (the children run only
Rust code and ``_exit``). Create the pool early, right after the imports and
before the model exists: pages the parent writes after a fork are copied on
write (a DCP load into a state dict allocated before the pool measured 2x
slower), and a large parent makes each fork slower. RDMA/EFA stacks need their fork-safe settings
(e.g. ``RDMAV_FORK_SAFE=1``) before a pool is created. A pool, reader or
buffer cannot be used after ``os.fork()``: the child gets ``PoolError``.
"""

import atexit

from ._errors import *  # noqa: F401,F403
from ._errors import __all__ as _error_names
from ._shmfetch import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_WORKERS,
    MAX_WORKERS,
    Buffer,
    ChunkIterator,
    ParallelReader,
    WorkerPool,
    __version__,
    close_default_pools,
    default_pool,
)
from ._io import ObjectStream

# At exit, let the default pools go first, so their workers are killed and
# reaped by this process rather than left to init as it ends.
atexit.register(close_default_pools)

__all__ = [
    "ParallelReader",
    "WorkerPool",
    "Buffer",
    "ChunkIterator",
    "ObjectStream",
    "default_pool",
    "close_default_pools",
    "DEFAULT_WORKERS",
    "DEFAULT_CHUNK_SIZE",
    "MAX_WORKERS",
    "__version__",
    *_error_names,
]
