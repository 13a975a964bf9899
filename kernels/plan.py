"""Split planning for shared-prefix decode attention.

A :class:`SharedPrefixDecodePlan` holds the host-side facts of one set of forks: the
suffix lengths read from ``suffix_indptr`` and how many keys each split-K program
takes. Building it reads ``suffix_indptr`` once, so a caller that decodes many layers
with the same forks plans once per step and launches without host syncs (and can
capture the launch in a CUDA graph).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_CHUNK_ALIGN = 64


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_power_of_2(x: int) -> int:
    return 1 << max(0, x - 1).bit_length()


def _prefix_block_m(num_rows: int, head_dim: int, is_fp32: bool = False) -> int:
    """Rows of the stacked prefix query tile (``tl.dot`` needs at least 16).

    The caps keep the fp32 accumulator and the query tile in registers for at least
    one autotune config (checked with ptxas for sm_80 and sm_90): 128 rows up to
    D=128, 64 beyond, 32 for fp32 inputs (whose IEEE dots need more registers).
    """
    cap = 32 if is_fp32 else (128 if head_dim <= 128 else 64)
    return min(cap, max(16, _next_power_of_2(num_rows)))


def _chunk_size(length: int, programs_per_split: int, target_programs: int, min_chunk: int) -> int:
    """Keys per split: enough splits to reach ``target_programs``, none under ``min_chunk``."""
    num_splits = max(1, min(_cdiv(target_programs, programs_per_split), _cdiv(length, min_chunk)))
    return max(_CHUNK_ALIGN, _cdiv(_cdiv(length, num_splits), _CHUNK_ALIGN) * _CHUNK_ALIGN)


@dataclass(frozen=True)
class SharedPrefixDecodePlan:
    """Host-side launch facts for one set of forks (reusable across layers).

    Build it with :func:`plan_shared_prefix_decode`. ``prefix_chunk_size`` and
    ``suffix_chunk_size`` are the keys per split of the prefix and suffix kernels.
    """

    num_forks: int
    num_qo_heads: int
    num_kv_heads: int
    head_dim: int
    prefix_len: int
    total_suffix_len: int
    max_suffix_len: int
    prefix_chunk_size: int
    suffix_chunk_size: int

    @property
    def group(self) -> int:
        return self.num_qo_heads // self.num_kv_heads

    @property
    def num_prefix_splits(self) -> int:
        return _cdiv(self.prefix_len, self.prefix_chunk_size)

    @property
    def num_suffix_splits(self) -> int:
        return max(1, _cdiv(self.max_suffix_len, self.suffix_chunk_size))


def plan_shared_prefix_decode(
    suffix_indptr: torch.Tensor | list[int],
    prefix_len: int,
    num_qo_heads: int,
    num_kv_heads: int,
    head_dim: int,
    *,
    num_sms: int | None = None,
    prefix_chunk_size: int | None = None,
    suffix_chunk_size: int | None = None,
) -> SharedPrefixDecodePlan:
    """Check ``suffix_indptr`` and choose split sizes.

    Args:
        suffix_indptr: ``[N + 1]`` offsets of each fork's suffix rows (tensor on any
            device, or a list); read once on the host.
        prefix_len, num_qo_heads, num_kv_heads, head_dim: ``P``, ``Hq``, ``Hkv``, ``D``.
        num_sms: streaming multiprocessors to fill (default: the current CUDA device's,
            or 1 without CUDA, i.e. as few splits as the minimum chunk allows).
        prefix_chunk_size, suffix_chunk_size: force the keys per split (>= 1).

    Example:
        >>> plan = plan_shared_prefix_decode([0, 3, 5], 100, 8, 2, 64, num_sms=1)
        >>> plan.num_forks, plan.max_suffix_len, plan.num_prefix_splits
        (2, 3, 1)
    """
    if not isinstance(suffix_indptr, list):
        if suffix_indptr.dim() != 1 or suffix_indptr.dtype.is_floating_point:
            raise ValueError(
                f"suffix_indptr must be a 1-D integer tensor [N + 1]; got shape "
                f"{tuple(suffix_indptr.shape)} dtype {suffix_indptr.dtype}"
            )
        suffix_indptr = suffix_indptr.tolist()
    if len(suffix_indptr) < 1 or suffix_indptr[0] != 0:
        raise ValueError(
            f"suffix_indptr must start with 0 and have N + 1 entries; got {suffix_indptr[:8]}"
        )
    lengths = [b - a for a, b in itertools.pairwise(suffix_indptr)]
    if any(n < 0 for n in lengths):
        raise ValueError(f"suffix_indptr must be non-decreasing; got {suffix_indptr[:16]}")
    if prefix_len < 0 or num_kv_heads < 1 or head_dim < 1 or num_qo_heads % num_kv_heads:
        raise ValueError(
            f"need prefix_len >= 0, head_dim >= 1 and num_qo_heads a multiple of num_kv_heads; "
            f"got {prefix_len}, {head_dim}, {num_qo_heads}, {num_kv_heads}"
        )
    for name, value in (
        ("prefix_chunk_size", prefix_chunk_size),
        ("suffix_chunk_size", suffix_chunk_size),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1; got {value}")
    num_forks = len(lengths)
    max_suffix_len = max(lengths, default=0)
    group = num_qo_heads // num_kv_heads
    if num_sms is None:
        num_sms = _num_sms()
    target_programs = 2 * num_sms
    if prefix_chunk_size is None:
        num_rows = num_forks * group
        programs_per_split = num_kv_heads * _cdiv(num_rows, _prefix_block_m(num_rows, head_dim))
        # Each split writes fp32 partials for all num_rows rows; a chunk of >= 4 * rows
        # keys keeps that traffic under about half of the chunk's K/V bytes.
        min_chunk = max(4 * _CHUNK_ALIGN, 4 * num_rows)
        prefix_chunk_size = _chunk_size(prefix_len, programs_per_split, target_programs, min_chunk)
    if suffix_chunk_size is None:
        suffix_chunk_size = _chunk_size(
            max_suffix_len, max(1, num_forks * num_kv_heads), target_programs, 2 * _CHUNK_ALIGN
        )
    return SharedPrefixDecodePlan(
        num_forks=num_forks,
        num_qo_heads=num_qo_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        prefix_len=prefix_len,
        total_suffix_len=suffix_indptr[-1],
        max_suffix_len=max_suffix_len,
        prefix_chunk_size=prefix_chunk_size,
        suffix_chunk_size=suffix_chunk_size,
    )


def _num_sms() -> int:
    import torch

    if not torch.cuda.is_available():
        return 1
    return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
