"""The exceptions shmfetch raises.

Every error of the Rust core arrives as a subclass of :class:`Error`, with
the core's message unchanged. Where Python has a built-in meaning for the
same failure the class also derives from it, so ``except FileNotFoundError``
or ``except ValueError`` work as they would with ``open()``.
"""


class Error(Exception):
    """Base class of every error shmfetch raises for a failed transfer."""


class InvalidConfig(Error, ValueError):
    """A worker count, chunk size, offset or other setting that makes no sense."""


class InvalidSource(Error, ValueError):
    """A location (URL or path) that cannot be used."""


class BucketNotFound(Error, FileNotFoundError):
    """The bucket does not exist."""


class ObjectNotFound(Error, FileNotFoundError):
    """The object does not exist."""


class AccessDenied(Error, PermissionError):
    """The server refused the credentials or token (401/403)."""


class HttpError(Error):
    """An HTTP status the transfer cannot use (after retries)."""


class RangeMismatch(Error):
    """The server answered a ranged GET with other bytes than asked for."""


class ShortRead(Error):
    """The body ended before its announced length (after retries)."""


class ObjectChanged(Error):
    """The object changed (ETag/version) while it was being read."""


class TransportError(Error, ConnectionError):
    """Connect, TLS, DNS or socket failures (after retries)."""


class IoError(Error, OSError):
    """A local file could not be read or written."""


class ShmError(Error, OSError):
    """Shared memory (/dev/shm) could not be created or mapped."""


class ShmNoSpace(ShmError):
    """/dev/shm has no room for the buffer; free space or use fewer workers."""


class InvalidRanges(Error, ValueError):
    """Byte ranges that are unsorted, overlapping or out of bounds."""


class PickleError(Error):
    """A checkpoint's .metadata could not be decoded."""


class CheckpointError(Error):
    """A checkpoint is malformed (an item outside its file, a missing file...)."""


class UnsupportedAccess(Error, ValueError):
    """A reader was asked for an access pattern it does not support."""


class WorkerCrashed(Error):
    """A worker process died more often than the supervisor re-runs ranges."""


class PoolError(Error):
    """The worker pool could not start, is gone, or was used across os.fork()."""


__all__ = [
    "Error",
    "InvalidConfig",
    "InvalidSource",
    "BucketNotFound",
    "ObjectNotFound",
    "AccessDenied",
    "HttpError",
    "RangeMismatch",
    "ShortRead",
    "ObjectChanged",
    "TransportError",
    "IoError",
    "ShmError",
    "ShmNoSpace",
    "InvalidRanges",
    "PickleError",
    "CheckpointError",
    "UnsupportedAccess",
    "WorkerCrashed",
    "PoolError",
]
