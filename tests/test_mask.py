"""Mask validation and the block map against a brute-force element-wise check."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention.mask import BlockSizes, Mask, attention_flops, block_map, element_mask


@pytest.mark.parametrize("bad", [(-1, 0), (0, -3), (1,), (1.5, 2), "ab", (True, 1)])
def test_window_validation(bad):
  with pytest.raises(ValueError, match="window"):
    Mask(window=bad)


def test_causal_validation():
  with pytest.raises(ValueError, match="causal"):
    Mask(causal="yes")


def test_block_sizes_validation():
  with pytest.raises(ValueError, match="block_q"):
    BlockSizes(0, 16)


def brute_force(mask, t, s, bq, bk, q_offset, has_segments):
  """Per (q block, kv block): 0 no visible entry, 1 some, 2 all (over real rows and block columns)."""
  vis = np.broadcast_to(element_mask(mask, np.arange(t)[:, None] + q_offset, np.arange(s)[None, :], s), (t, s))
  nq, nk = -(-t // bq), -(-s // bk)
  code = np.zeros((nq, nk), np.int32)
  for i, j in itertools.product(range(nq), range(nk)):
    tile = vis[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
    full = tile.all() and (j + 1) * bk <= s and not has_segments
    code[i, j] = 2 if full else int(tile.any())
  return code


CASES = [
    (Mask(), 100, 100, 32, 16, 0),
    (Mask(causal=True), 130, 130, 32, 32, 0),
    (Mask(causal=True), 17, 200, 8, 32, 150),
    (Mask(causal=True), 200, 50, 32, 16, 0),  # T > S: later rows see all keys
    (Mask(window=(20, 5)), 150, 140, 16, 32, 0),
    (Mask(causal=True, window=(0, 0)), 64, 64, 16, 16, 0),
    (Mask(causal=True, window=(40, 9)), 97, 131, 16, 8, 3),
    (Mask(window=(3, 0)), 50, 20, 8, 8, 30),  # queries beyond every key's window: empty rows
    (Mask(window=(1000, 1000)), 70, 90, 32, 32, 0),
]


@pytest.mark.parametrize("mask,t,s,bq,bk,off", CASES)
@pytest.mark.parametrize("has_segments", [False, True])
def test_block_map_matches_brute_force(mask, t, s, bq, bk, off, has_segments):
  bm = block_map(mask, t, s, BlockSizes(bq, bk), has_segments=has_segments, q_offset=off)
  expected = brute_force(mask, t, s, bq, bk, off, has_segments)
  np.testing.assert_array_equal(bm.dense(), expected)

  def walked(ranges, n):  # the 0/1/2 code of each (row, tile) a kernel walking these ranges visits
    start, full_start, full_end, end = (r[:, None] for r in ranges)
    j = np.arange(n)[None]
    return ((j >= start) & (j < end)).astype(int) + ((j >= full_start) & (j < full_end)).astype(int)

  # The kernels' ranges tables, q-major and kv-major (the transposed map), describe the same matrix.
  np.testing.assert_array_equal(walked(bm.ranges(), bm.num_kv_blocks), expected)
  np.testing.assert_array_equal(walked(bm.ranges(kv_major=True), bm.num_q_blocks), expected.T)


def test_traced_offsets_cover_every_batch_row():
  """With a traced [B] q_offset the map is one range per q block for the whole batch: it must visit every
  block any row needs, and call a block full only if it is full for every row."""
  mask, t, s, bs = Mask(causal=True, window=(30, 0)), 20, 300, BlockSizes(8, 16)
  offsets = np.array([0, 100, 270])
  traced = np.asarray(jax.jit(lambda off: block_map(mask, t, s, bs, q_offset=off).dense())(jnp.asarray(offsets)))
  per_row = np.stack([block_map(mask, t, s, bs, q_offset=int(o)).dense() for o in offsets])
  assert np.all((traced >= 1) >= (per_row >= 1).any(0))
  assert np.all((traced == 2) <= (per_row == 2).all(0))
  assert (traced == 0).any()  # blocks no row needs are still skipped


def test_window_skips_blocks_and_flops_follow():
  bs = BlockSizes(128, 128)
  causal = block_map(Mask(causal=True), 4096, 4096, bs).num_visited()
  local = block_map(Mask(causal=True, window=(128, 0)), 4096, 4096, bs).num_visited()
  assert causal == 32 * 33 // 2 and local == 32 + 31
  f_c = attention_flops(Mask(causal=True), 4096, 4096, 8, 64, block_sizes=bs)
  assert f_c == 8 * causal * 2 * 128 * 128 * (64 + 64)


def test_kv_major_full_range_lies_inside_the_visited_range():
  """A kv block without a fully visible q block (here: segments, or the last causal block) walks no
  q block before q_start: its full range is empty at q_start, not (0, 0)."""
  for kw in (dict(has_segments=True, q_offset=40), dict(q_offset=40)):
    r = block_map(Mask(causal=True), 96, 160, BlockSizes(64, 128), **kw).ranges(kv_major=True)
    start, full_start, full_end, end = r
    assert np.all((start <= full_start) & (full_start <= full_end) & (full_end <= end)), r
    assert np.any(start > 0)
