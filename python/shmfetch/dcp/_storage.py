"""torch.distributed.checkpoint storage reader and writer over FileSystem."""

import dataclasses
import io
import warnings


import torch
from torch.futures import Future
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter, _StoragePrefix
from torch.distributed.checkpoint.planner import LoadItemType

try:  # where torch's FileSystemReader gets it
    from torch.distributed.checkpoint.filesystem import narrow_tensor_by_index
except ImportError:  # pragma: no cover - older torch
    from torch.distributed._shard._utils import narrow_tensor_by_index

from .._errors import CheckpointError, PickleError
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

    Create the worker pool (``shmfetch.default_pool(n)`` or a
    ``WorkerPool`` passed as ``pool=``) before the model and state dict:
    pages written after the fork are copied on write, which measured 2x
    slower loads.
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

    def read_data(self, plan, planner):
        """Reads the plan's items, file by file in storage order. Tensor
        items are decoded by the Rust core (the ``torch.save`` archive
        parsed without Python unpickling) into one buffer that the target
        tensor copies from: one copy from shared memory, one into the
        target. Items written with stream transforms (torch's experimental
        extensions), and the range-based reader, go through torch's own
        path."""
        if self.fs.reader_kind == "range_based" or any(
            getattr(self.storage_data[i.storage_index], "transform_descriptors", None) for i in plan.items
        ):
            # range_based: one request per read, so keep torch.load's
            # access pattern (the zip decoder's seeks would refill the
            # buffer more often: measured 1.6x the bytes on the fixture).
            return super().read_data(plan, planner)
        per_file = {}
        for item in plan.items:
            per_file.setdefault(self.storage_data[item.storage_index].relative_path, []).append(item)
        with warnings.catch_warnings():
            # torch.frombuffer over a read-only buffer warns that the tensor
            # is writable; it is only copied from.
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            files = list(per_file.items())
            # The dcp-optimized reader holds at most two pieces of a file,
            # so the next file can open early; a sequential reader would
            # hold a second whole file.
            ahead = 2 if self.fs.reader_kind == "dcp_optimized" else 1
            opened = []  # (stream, context manager), the next file's opened early
            try:
                for i, (relative_path, reqs) in enumerate(files):
                    while len(opened) < min(ahead, len(files) - i):
                        # Opening starts the fetch: the next file's first
                        # bytes arrive while this one is decoded.
                        cm = self.fs.create_stream(self.fs.concat_path(self.path, files[i + len(opened)][0]), "rb")
                        opened.append((cm.__enter__(), cm))
                    stream, cm = opened.pop(0)
                    try:
                        self._read_file(stream, relative_path, reqs, planner)
                    finally:
                        cm.__exit__(None, None, None)
            finally:
                for _, cm in opened:
                    cm.__exit__(None, None, None)
        fut = Future()
        fut.set_result(None)
        return fut

    def _read_file(self, stream, relative_path, reqs, planner):
        for req in reqs:
            info = self.storage_data[req.storage_index]
            if req.type == LoadItemType.BYTE_IO:
                stream.seek(info.offset)
                planner.load_bytes(req, io.BytesIO(stream.read(info.length)))
                continue
            what = f"{relative_path} item {req.storage_index.fqn} at {info.offset}"
            try:
                dtype, shape, data = stream.read_tensor(info.offset, info.length, what)
            except (PickleError, CheckpointError):
                # A tensor the native decoder does not know (complex,
                # quantized, ...): torch.load it, as torch's reader does.
                stream.seek(info.offset)
                item = io.BytesIO(stream.read(info.length))
                tensor = torch.load(item, map_location="cpu", weights_only=True)
            else:
                dtype = getattr(torch, dtype)
                if len(data):
                    tensor = torch.frombuffer(data, dtype=dtype).reshape(shape)
                else:
                    tensor = torch.empty(shape, dtype=dtype)
            tensor = narrow_tensor_by_index(tensor, req.storage_offsets, req.lengths)
            target = planner.resolve_tensor(req).detach()
            if target.size() != tensor.size():
                raise AssertionError(f"req {req.storage_index} mismatch sizes {target.size()} vs {tensor.size()}")
            target.copy_(tensor)
            planner.commit_tensor(req, target)

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
