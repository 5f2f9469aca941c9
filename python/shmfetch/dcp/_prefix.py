"""Prefix strategies of the DCP writer: where each rank's files go.

The same classes, arguments and prefixes as the S3 connector's
(``s3torchconnector.dcp``); the prefixes are computed by the Rust core
(``shmfetch::dcp::PrefixStrategy``). Spreading ranks over prefixes lets S3
scale request rates per prefix.
"""

from abc import ABC, abstractmethod

from .._shmfetch import _PrefixStrategy


def _check_epoch(epoch_num):
    if epoch_num is not None and (isinstance(epoch_num, bool) or not isinstance(epoch_num, int)):
        raise ValueError(f"Epoch number must be None or an integer, got {epoch_num}")
    if epoch_num is not None and epoch_num < 0:
        raise ValueError(f"Epoch number must not be negative, got {epoch_num}")
    return epoch_num


class PrefixStrategyBase(ABC):
    """A strategy: ``strategy(rank)`` is the prefix of that rank's files."""

    def __call__(self, rank: int) -> str:
        return self.generate_prefix(rank)

    @abstractmethod
    def generate_prefix(self, rank: int) -> str:
        """The prefix of ``rank``'s files."""


class _RustStrategy(PrefixStrategyBase):
    _impl: _PrefixStrategy

    def generate_prefix(self, rank: int) -> str:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank must be a non-negative integer, got {rank!r}")
        return self._impl.prefix(rank)

    def __repr__(self):
        return f"{type(self).__name__}({self._impl!r})"


class DefaultPrefixStrategy(_RustStrategy):
    """``__{rank}_``: torch's own naming, no extra prefix."""

    def __init__(self):
        self._impl = _PrefixStrategy.default()


class NumericPrefixStrategy(_RustStrategy):
    """``rank % prefix_count`` written in ``base`` (2 to 36), zero-padded to
    at least ``min_prefix_length`` digits, least significant digit first,
    then ``epoch_{epoch_num}/`` when given, then ``__{rank}_``.

    ``prefix_count`` defaults to the world size when ``torch.distributed``
    is initialised, else 1. **Build the strategy after
    ``init_process_group``**: one built before gives every rank the same
    prefix.
    """

    def __init__(self, base: int, epoch_num=None, min_prefix_length: int = 10, prefix_count=None):
        _check_epoch(epoch_num)
        if isinstance(min_prefix_length, bool) or not isinstance(min_prefix_length, int):
            if isinstance(min_prefix_length, float) and min_prefix_length < 1:
                raise ValueError(f"Minimum prefix length must be positive, got {min_prefix_length}")
            raise TypeError(f"min_prefix_length must be an integer, got {min_prefix_length!r}")
        if min_prefix_length < 1:
            raise ValueError(f"Minimum prefix length must be positive, got {min_prefix_length}")
        if prefix_count is None:
            prefix_count = _world_size()
        if isinstance(prefix_count, bool) or not isinstance(prefix_count, int) or prefix_count < 1:
            raise ValueError(f"Prefix count must be a positive integer, got {prefix_count}")
        self.base = base
        self.epoch_num = epoch_num
        self.min_prefix_length = min_prefix_length
        self.prefix_count = prefix_count
        self._impl = _PrefixStrategy.numeric(base, epoch_num, min_prefix_length, prefix_count)


class BinaryPrefixStrategy(NumericPrefixStrategy):
    """:class:`NumericPrefixStrategy` in base 2."""

    def __init__(self, epoch_num=None, min_prefix_length: int = 10, prefix_count=None):
        super().__init__(2, epoch_num, min_prefix_length, prefix_count)


class HexPrefixStrategy(NumericPrefixStrategy):
    """:class:`NumericPrefixStrategy` in base 16 (lower-case digits)."""

    def __init__(self, epoch_num=None, min_prefix_length: int = 10, prefix_count=None):
        super().__init__(16, epoch_num, min_prefix_length, prefix_count)


class RoundRobinPrefixStrategy(_RustStrategy):
    """``user_prefixes[rank % len(user_prefixes)]`` + ``/``, then
    ``epoch_{epoch_num}/`` when given, then ``__{rank}_``."""

    def __init__(self, user_prefixes, epoch_num=None):
        _check_epoch(epoch_num)
        prefixes = list(user_prefixes)
        if not prefixes:
            raise ValueError("user_prefixes must not be empty")
        self.user_prefixes = prefixes
        self.epoch_num = epoch_num
        self._impl = _PrefixStrategy.round_robin([str(p) for p in prefixes], epoch_num)


def _world_size() -> int:
    try:
        import torch.distributed as dist
    except ImportError:
        return 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1
