"""The file system under :class:`StorageReader` and :class:`StorageWriter`."""

import io
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass

from torch.distributed.checkpoint.filesystem import FileSystemBase

from .._shmfetch import _CheckpointFs

_METADATA = ".metadata"


@dataclass(frozen=True)
class _ReaderConfig:
    kind: str
    buffer_size: int = 8 << 20
    # None: unbounded.
    max_gap_size: "int | None" = 32 << 20


class ReaderConstructor:
    """How checkpoint data files are read (the S3 connector's
    ``S3ReaderConstructor``).

    - :meth:`sequential`: each file fetched whole, in parallel, then any
      access; the default of a bare :class:`FileSystem`.
    - :meth:`range_based`: one ranged request per read, through a buffer.
    - :meth:`dcp_optimized`: only the byte ranges the load plan needs,
      coalesced into groups and fetched by the worker pool; the default of
      :class:`StorageReader`. Needs the ranges injected by
      ``StorageReader.prepare_local_plan``.
    """

    @staticmethod
    def sequential():
        """Each file whole, fetched by the worker pool."""
        return _ReaderConfig("sequential")

    @staticmethod
    def range_based(buffer_size=None):
        """One ranged request per read; reads smaller than ``buffer_size``
        (default 8 MiB; 0 disables the buffer) fill a buffer first."""
        if buffer_size is None:
            buffer_size = 8 << 20
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int):
            raise TypeError(f"buffer_size must be an int, got {type(buffer_size).__name__}")
        if buffer_size < 0:
            raise ValueError(f"buffer_size must be non-negative (0 disables the buffer), got {buffer_size}")
        return _ReaderConfig("range_based", buffer_size=buffer_size)

    @staticmethod
    def dcp_optimized(max_gap_size=32 << 20):
        """Only the planned items, merging neighbours at most
        ``max_gap_size`` bytes apart (``float("inf")``: one group per file;
        0: touching items only)."""
        if isinstance(max_gap_size, bool) or not isinstance(max_gap_size, (int, float)):
            raise TypeError(f"max_gap_size must be int or float, got {type(max_gap_size).__name__}")
        if math.isnan(max_gap_size) or max_gap_size < 0:
            raise ValueError(f"max_gap_size must be non-negative, got {max_gap_size}")
        gap = None if math.isinf(max_gap_size) else int(max_gap_size)
        return _ReaderConfig("dcp_optimized", max_gap_size=gap)

    @staticmethod
    def default():
        """The sequential reader."""
        return ReaderConstructor.sequential()

    @staticmethod
    def get_reader_type_string(constructor) -> str:
        """``"sequential"``, ``"range_based"`` or ``"dcp_optimized"``."""
        if constructor is None:
            return "sequential"
        if not isinstance(constructor, _ReaderConfig):
            raise TypeError(f"not a reader constructor: {constructor!r}")
        return constructor.kind


def _is_local(path: str) -> bool:
    return "://" not in path or path.lower().startswith("file://")


class FileSystem(FileSystemBase):
    """Local paths, ``s3://bucket/prefix`` and ``ais://bucket/prefix``
    behind torch's ``FileSystemBase``, on one worker pool.

    ``create_stream(path, "rb")`` reads with the configured reader kind
    (``.metadata`` always sequentially); ``"wb"`` uploads through the pool
    (S3 and AIStore multipart uploads; a local temp file renamed into place)
    and stores nothing unless the block ends without an exception.

    Keyword options: ``pool`` (a :class:`shmfetch.WorkerPool`; default: the
    module's pool of ``workers`` workers), ``part_size``, ``endpoint``
    (AIStore), ``region``, ``endpoint_url``, ``unsigned``,
    ``addressing_style`` (S3), ``attempts``, ``retry_timeout``; the same
    environment variables as the command line otherwise.
    """

    def __init__(self, reader_constructor=None, **options):
        config = reader_constructor or ReaderConstructor.default()
        if not isinstance(config, _ReaderConfig):
            raise TypeError(f"reader_constructor must come from ReaderConstructor, got {config!r}")
        self._config = config
        self._fs = _CheckpointFs(config.kind, config.buffer_size, config.max_gap_size, **options)
        self._ranges = {}

    @property
    def reader_kind(self) -> str:
        """``sequential``, ``range_based`` or ``dcp_optimized``."""
        return self._fs.reader_kind

    @property
    def requests(self) -> int:
        """Range requests this file system's readers made."""
        return self._fs.requests

    @property
    def bytes_fetched(self) -> int:
        """Bytes this file system's readers fetched."""
        return self._fs.bytes_fetched

    def set_item_ranges(self, ranges_by_path):
        """The byte ranges the dcp-optimized reader may fetch, per file:
        ``{path: [(start, end), ...]}`` (``StorageReader`` injects them)."""
        self._ranges = {
            str(path): sorted(set((int(s), int(e)) for s, e in ranges)) for path, ranges in ranges_by_path.items()
        }

    @contextmanager
    def create_stream(self, path, mode):
        path = str(path)
        if mode == "rb":
            sequential = os.path.basename(path).endswith(_METADATA)
            raw = self._fs.open_read(path, None if sequential else self._ranges.get(path), sequential)
            stream = _ReadStream(raw)
            try:
                yield stream
            finally:
                stream.close()
        elif mode == "wb":
            if _is_local(path):
                parent = os.path.dirname(path)
                if parent:
                    os.makedirs(parent, exist_ok=True)
            stream = _WriteStream(self._fs.open_write(path))
            try:
                yield stream
            except BaseException:
                stream.abort()
                raise
            else:
                stream.close()
        else:
            raise ValueError(f"Invalid mode={mode}: create_stream only supports rb (read mode) & wb (write mode)")

    def concat_path(self, path, suffix):
        return self._fs.concat_path(str(path), str(suffix))

    def init_path(self, path):
        return self._fs.init_path(str(path))

    def rename(self, path, new_path):
        self._fs.rename(str(path), str(new_path))

    def mkdir(self, path):
        self._fs.mkdir(str(path))

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        if isinstance(checkpoint_id, os.PathLike):
            return True
        return isinstance(checkpoint_id, str) and _CheckpointFs.validate_checkpoint_id(checkpoint_id)

    def exists(self, path) -> bool:
        return self._fs.exists(str(path))

    def rm_file(self, path):
        self._fs.rm_file(str(path))


class _ReadStream(io.RawIOBase):
    """A checkpoint file being read (seekable within what its kind allows)."""

    def __init__(self, raw):
        super().__init__()
        self._raw = raw

    @property
    def kind(self) -> str:
        return self._raw.kind

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, b):
        return self._raw.readinto(b)

    def read(self, size=-1):
        if size is None:
            raise ValueError("read(None) is not supported: pass a size, or -1 for the rest")
        return self._raw.read(size)

    def readall(self):
        return self._raw.read(-1)

    def read_tensor(self, offset, length, what):
        """The tensor item at ``offset``: (dtype name, shape, bytes)."""
        return self._raw.read_tensor(offset, length, what)

    def seek(self, offset, whence=io.SEEK_SET):
        return self._raw.seek(offset, whence)

    def tell(self):
        return self._raw.tell()

    def close(self):
        if not self.closed:
            self._raw.close()
        super().close()


class _WriteStream(io.RawIOBase):
    """A checkpoint file being written: an upload, completed by ``close()``;
    dropped unclosed, or after ``abort()``, it stores nothing."""

    def __init__(self, raw):
        super().__init__()
        self._raw = raw

    def writable(self):
        return True

    def write(self, b):
        return self._raw.write(b)

    def tell(self):
        return self._raw.tell()

    def flush(self):
        pass

    def abort(self):
        self._raw.abort()
        super().close()

    def close(self):
        if not self.closed:
            self._raw.close()
        super().close()

    def __del__(self):
        # Never complete an upload nobody closed: io.IOBase.__del__ would.
        if not self.closed:
            try:
                self.abort()
            except Exception:
                pass
