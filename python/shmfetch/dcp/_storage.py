"""torch.distributed.checkpoint storage reader and writer over FileSystem."""

import dataclasses

from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter, _StoragePrefix

from ._fs import FileSystem, ReaderConstructor
from ._prefix import DefaultPrefixStrategy, PrefixStrategyBase


class StorageReader(FileSystemReader):
    """Loads a checkpoint with ``torch.distributed.checkpoint.load`` from a
    local path, ``s3://bucket/prefix`` or ``ais://bucket/prefix``.

    ``reader_constructor`` picks how data files are read (default
    :meth:`ReaderConstructor.dcp_optimized`: only the byte ranges the load
    plan needs, coalesced, fetched by the worker pool). ``.metadata`` is
    always read sequentially. Other keyword options go to
    :class:`FileSystem` (``pool``, ``workers``, ``endpoint``, ``region``,
    ``endpoint_url``, ``unsigned``, ``attempts``, …).
    """

    def __init__(self, path, reader_constructor=None, **options):
        super().__init__(path)
        self.fs = FileSystem(reader_constructor or ReaderConstructor.dcp_optimized(), **options)
        self.path = self.fs.init_path(path)

    def prepare_local_plan(self, plan):
        """Sorts the plan's items by their offset in storage and, for the
        dcp-optimized reader, tells it each file's item ranges."""
        plan.items.sort(key=lambda item: self.storage_data[item.storage_index].offset)
        if self.fs.reader_kind == "dcp_optimized":
            ranges = {}
            for item in plan.items:
                info = self.storage_data[item.storage_index]
                path = self.fs.concat_path(self.path, info.relative_path)
                ranges.setdefault(path, []).append((info.offset, info.offset + info.length))
            self.fs.set_item_ranges(ranges)
        return plan

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        return FileSystem.validate_checkpoint_id(checkpoint_id)


class StorageWriter(FileSystemWriter):
    """Saves a checkpoint with ``torch.distributed.checkpoint.save`` to a
    local path, ``s3://bucket/prefix`` or ``ais://bucket/prefix``.

    Each rank's files are named ``{prefix}{n}.distcp`` with the prefix
    ``prefix_strategy(rank)`` (default ``__{rank}_``); ``.metadata`` is
    written as ``.metadata.tmp`` and renamed. ``thread_count`` files are
    written at once, each uploaded through the worker pool in parts
    (``part_size``, default 8 MiB). ``sync_files`` is off (object stores
    have nothing to fsync). Other keyword options go to
    :class:`FileSystem`; torch's ``FileSystemWriter`` options
    (``single_file_per_rank``, ``overwrite``, …) are passed on.
    """

    _FS_OPTIONS = (
        "pool",
        "workers",
        "part_size",
        "endpoint",
        "region",
        "endpoint_url",
        "unsigned",
        "addressing_style",
        "attempts",
        "retry_timeout",
    )

    def __init__(self, path, prefix_strategy=None, thread_count=1, **kwargs):
        fs_options = {k: kwargs.pop(k) for k in self._FS_OPTIONS if k in kwargs}
        kwargs["sync_files"] = False
        super().__init__(path, thread_count=thread_count, **kwargs)
        self.fs = FileSystem(**fs_options)
        self.path = self.fs.init_path(path)
        strategy = prefix_strategy or DefaultPrefixStrategy()
        if not isinstance(strategy, PrefixStrategyBase) and not callable(strategy):
            raise TypeError(f"prefix_strategy must be a prefix strategy, got {strategy!r}")
        self.prefix_strategy = strategy

    def prepare_global_plan(self, plans):
        """Sets each plan's storage prefix: ``prefix_strategy(rank)``."""
        return [
            dataclasses.replace(plan, storage_data=_StoragePrefix(self.prefix_strategy(rank)))
            for rank, plan in enumerate(plans)
        ]

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        return FileSystem.validate_checkpoint_id(checkpoint_id)
