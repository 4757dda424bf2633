"""Tiles of one sample's positions x channels, for the kernels that reduce over a map and then apply per channel
(GELU + GRN, batch norm + residual): Triton routines and the launch geometry they share.

Such a kernel runs on the grid (chunks, channel blocks, samples): program (k, j, b) walks the positions
[k R, (k + 1) R) of sample b (R = rows_per_chunk, a multiple of BLOCK_P) in tiles of BLOCK_P positions x BLOCK_C
channels, the full tiles without masks and the chunk's last, partial tile masked. The positions of an H x W map are
one axis: any tensor whose row stride is W times its column stride (NHWC, channels_last NCHW, contiguous NCHW).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from zoo.kernels._backend import H200_SMS, INTERPRETER, cdiv, next_power_of_2, sm_count, tl, triton
from zoo.kernels.dwconv._common import to_f32

# A tile: BLOCK_P positions x BLOCK_C channels, 2048 elements over 4 warps (16 a thread; a row of 64 bf16 channels
# is 128 bytes, 8 threads of 16-byte vectors), BLOCK_C one of the powers of two from 16 to 256. The interpreter
# takes small tiles of 16 channels, so that the tests' small maps have several tiles, partial tiles and chunks.
BLOCK_C_CHOICES = (16,) if INTERPRETER else (256, 128, 64, 32, 16)
TILE_ELEMENTS = 64 if INTERPRETER else 2048
MAX_BATCH = 65535  # the samples are the grid's third axis, which CUDA bounds
PROGRAMS_PER_SM = 8  # the chunks split a sample's map until the grid has about this many programs per SM
_INTERPRETER_SMS = 3


@triton.jit
def tile_pointers(base, rows, cols, stride_p, stride_c):
    """Pointers of a [BLOCK_P, BLOCK_C] tile: positions ``rows``, channels ``cols``."""
    return base + rows[:, None] * stride_p + cols[None, :] * stride_c


@triton.jit
def load_tile(ptr, rows, row_end, cols, C, MASK_ROWS: tl.constexpr, EVEN_C: tl.constexpr):
    """A [BLOCK_P, BLOCK_C] tile as float32, zero where masked: rows at ``row_end`` only for the partial tile,
    columns at C only when C is not a multiple of BLOCK_C."""
    if MASK_ROWS:
        if EVEN_C:
            x = tl.load(ptr, mask=(rows < row_end)[:, None], other=0.0)
        else:
            x = tl.load(ptr, mask=(rows < row_end)[:, None] & (cols < C)[None, :], other=0.0)
    else:
        if EVEN_C:
            x = tl.load(ptr)
        else:
            x = tl.load(ptr, mask=(cols < C)[None, :], other=0.0)
    return to_f32(x)


@triton.jit
def store_tile(ptr, value, rows, row_end, cols, C, MASK_ROWS: tl.constexpr, EVEN_C: tl.constexpr):
    """Store a [BLOCK_P, BLOCK_C] tile in the pointers' dtype, masked as :func:`load_tile` loads."""
    value = value.to(ptr.dtype.element_ty)
    if MASK_ROWS:
        if EVEN_C:
            tl.store(ptr, value, mask=(rows < row_end)[:, None])
        else:
            tl.store(ptr, value, mask=(rows < row_end)[:, None] & (cols < C)[None, :])
    else:
        if EVEN_C:
            tl.store(ptr, value)
        else:
            tl.store(ptr, value, mask=(cols < C)[None, :])


@triton.jit
def store_row(ptr, value, cols, C, EVEN_C: tl.constexpr):
    """Store the channels ``cols`` of a row (unit stride) in the pointer's dtype."""
    value = value.to(ptr.dtype.element_ty)
    if EVEN_C:
        tl.store(ptr + cols, value)
    else:
        tl.store(ptr + cols, value, mask=cols < C)


@triton.jit
def load_row(ptr, cols, C, EVEN_C: tl.constexpr):
    """The channels ``cols`` of a row (unit stride) as float32, zero past C."""
    if EVEN_C:
        x = tl.load(ptr + cols)
    else:
        x = tl.load(ptr + cols, mask=cols < C, other=0.0)
    return x.to(tl.float32)


@triton.jit
def chunk_rows(P, rows_per_chunk, BLOCK_P: tl.constexpr):
    """(first row, end of the full tiles, end) of this program's chunk of positions."""
    row_begin = tl.program_id(0) * rows_per_chunk
    row_end = tl.minimum(row_begin + rows_per_chunk, P)
    full_end = row_begin + (row_end - row_begin) // BLOCK_P * BLOCK_P
    return row_begin, full_end, row_end


@functools.cache
def blocks(
    channels: int, positions: int, choices: tuple[int, ...] = BLOCK_C_CHOICES, tile: int = TILE_ELEMENTS
) -> tuple[int, int, bool]:
    """(BLOCK_P, BLOCK_C, EVEN_C) of a tile of ``tile`` elements: of the ``choices`` of BLOCK_C that divide C, the
    one whose BLOCK_P = tile / BLOCK_C pads the map's positions least (the chunk's partial last tile costs a whole
    tile), the widest on a tie. UniRepLKNet-T's hidden maps (4 C): 56 x 56 in 32 x 64 tiles, 28 x 28 in 16 x 128
    (784 = 49 x 16), 14 x 14 in 8 x 256 (196 positions in 200 rows; 224 in tiles of 32), 7 x 7 in 8 x 256 (56 rows;
    64). Where no choice divides C, blocks of up to 64 channels, the last one masked."""
    dividing = [c for c in choices if channels % c == 0]
    if not dividing:
        block_c = min(max(choices), 64, next_power_of_2(channels))
        return max(1, tile // block_c), block_c, channels % block_c == 0
    block_c = min(dividing, key=lambda c: (cdiv(positions, tile // c) * (tile // c), -c))
    return max(1, tile // block_c), block_c, True


def positions_per_chunk(positions: int, tiles_elsewhere: int, block_p: int, sms: int) -> int:
    """Positions per chunk, a multiple of BLOCK_P: a sample's map is split into the fewest chunks that give the grid
    about ``PROGRAMS_PER_SM`` programs per SM (``tiles_elsewhere``: samples x channel blocks)."""
    tiles = max(1, cdiv(positions, block_p))
    chunks = min(tiles, max(1, cdiv(sms * PROGRAMS_PER_SM, tiles_elsewhere)))
    return cdiv(tiles, chunks) * block_p


def grid_sms(device: torch.device) -> int:
    """The SMs the grid is sized for: the device's, a stand-in on the interpreter (3) and without a GPU (H200's)."""
    return sm_count(device, _INTERPRETER_SMS if INTERPRETER else H200_SMS)


def geometry(batch: int, positions: int, channels: int, device: torch.device) -> tuple[tuple[int, int, bool], int, int]:
    """(blocks, chunks, rows per chunk) of a [batch, positions, channels] launch."""
    block_p, block_c, even_c = tile = blocks(channels, positions)
    rows = positions_per_chunk(positions, batch * cdiv(channels, block_c), block_p, grid_sms(device))
    return tile, cdiv(positions, rows), rows


def positions_merge(t: Tensor, channel_dim: int) -> bool:
    """Whether the positions of a 4-D ``t`` (channels: dimension ``channel_dim``, 3 for NHWC, 1 for NCHW; the other
    two: the map's rows and columns) are one axis of its strides: the row stride the width times the column stride
    (any NHWC or channels_last tensor, a contiguous NCHW one; a size-1 dimension's stride does not matter)."""
    row_dim, col_dim = (1, 2) if channel_dim == 3 else (2, 3)
    return t.shape[col_dim] == 1 or t.shape[row_dim] == 1 or t.stride(row_dim) == t.shape[col_dim] * t.stride(col_dim)


def merged_positions(t: Tensor, channel_dim: int) -> tuple[Tensor, tuple[int, int, int]]:
    """(t, its strides over (sample, position, channel)) for a 4-D ``t`` whose channels are dimension
    ``channel_dim``: ``t`` itself where its positions merge (:func:`positions_merge`), else a contiguous copy."""
    if not positions_merge(t, channel_dim):
        t = t.contiguous()
    row_dim, col_dim = (1, 2) if channel_dim == 3 else (2, 3)
    position_dim = row_dim if t.shape[col_dim] == 1 else col_dim  # (a size-1 dimension's stride is arbitrary)
    return t, (t.stride(0), t.stride(position_dim), t.stride(channel_dim))
