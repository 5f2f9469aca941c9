"""PyTorch Distributed Checkpoints through shmfetch.

:class:`StorageReader` and :class:`StorageWriter` plug into
``torch.distributed.checkpoint.load/save``; both run on :class:`FileSystem`,
which serves local paths, ``s3://`` and ``ais://`` locations through one
worker pool. They follow the S3 connector for PyTorch (``s3torchconnector``
1.5.0): same reader kinds, range injection, prefix strategies and file
layout, so checkpoints move between the two::

    import torch.distributed.checkpoint as dcp
    from shmfetch.dcp import StorageReader, StorageWriter, ReaderConstructor, HexPrefixStrategy

    dcp.save(state_dict, storage_writer=StorageWriter(
        "s3://bucket/ckpt/", prefix_strategy=HexPrefixStrategy(prefix_count=4), thread_count=4))
    dcp.load(state_dict, storage_reader=StorageReader(
        "s3://bucket/ckpt/", reader_constructor=ReaderConstructor.dcp_optimized(max_gap_size=32 << 20)))
"""

from ._fs import FileSystem, ReaderConstructor
from ._prefix import (
    BinaryPrefixStrategy,
    DefaultPrefixStrategy,
    HexPrefixStrategy,
    NumericPrefixStrategy,
    PrefixStrategyBase,
    RoundRobinPrefixStrategy,
)
from ._storage import StorageReader, StorageWriter

__all__ = [
    "StorageReader",
    "StorageWriter",
    "FileSystem",
    "ReaderConstructor",
    "PrefixStrategyBase",
    "DefaultPrefixStrategy",
    "NumericPrefixStrategy",
    "BinaryPrefixStrategy",
    "HexPrefixStrategy",
    "RoundRobinPrefixStrategy",
]
