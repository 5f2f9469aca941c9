"""File objects over the Rust core's streams."""

import io


class ObjectStream(io.RawIOBase):
    """An object read in order from an offset (``ParallelReader.stream``).

    ``readinto`` copies from the shared-memory ring into the caller's buffer
    with the GIL released; ``read``/``readall`` build on it. Not seekable:
    make a new stream at another offset instead.
    """

    def __init__(self, raw):
        super().__init__()
        self._raw = raw

    def readable(self):
        return True

    def readinto(self, b):
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        return self._raw.readinto(b)

    def close(self):
        if not self.closed:
            self._raw.close()
        super().close()
