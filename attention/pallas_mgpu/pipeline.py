"""The warp-specialised skeleton the three pallas_mgpu kernels share: register split, program position, the
K/V producer of the q-tile kernels (forward and dQ) and the producer's drain.

A CTA runs three warpgroups: wg 2 is the producer, which only issues TMA copies into a ring of
`num_stages` shared-memory slots and gives its registers away (setmaxnreg); wg 0 and 1 are the consumers.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

CONSUMER_REGS, PRODUCER_REGS = 232, 40  # 2 * 128 * 232 + 128 * 40 <= 64K registers
PRODUCER = 2  # the producer's warpgroup index; the consumers are 0 and 1


def ranges_of(rng_ref, b, i):
  """(start, full_start, full_end, end) of tile i in batch row b of an int32 [B, 4, n] ranges operand."""
  return tuple(rng_ref[b, r, i] for r in range(4))


def drain(first, stop, barriers):
  """The producer waits for the consumers to free the slots of its last uses [first, stop) before exiting.

  Hardware does not need it (the consumers wait for nothing after), but it leaves every barrier phase
  observed, which the interpreter checks when it frees a barrier.
  """

  @pl.loop(first, stop)
  def _(t):
    for bar in barriers(t):
      plgpu.barrier_wait(bar)


def load(copies, barrier):
  """TMA-copy each (global ref, shared ref) pair (None: skipped), all arriving on `barrier`; wait for them."""
  for copy in copies:
    if copy is not None:
      plgpu.copy_gmem_to_smem(*copy, barrier)
  plgpu.barrier_wait(barrier)


def consumers(wg):
  """Decorator: run the function once on each consumer warpgroup (wg 0 and 1), with the registers the
  producer gave up."""

  def run(fn):
    @pl.when(wg < PRODUCER)
    def _():
      plgpu.set_max_registers(CONSUMER_REGS, action="increase")
      fn()

  return run


class QTileProgram(NamedTuple):
  """Where one CTA of a q-tile kernel (forward, dQ) works: warpgroup, q tile i (2 * block_q rows), batch
  row b, query head h and its kv head, and the kv tiles it visits, ranges = (start, full_start, full_end,
  end)."""

  wg: jax.Array
  i: jax.Array
  b: jax.Array
  h: jax.Array
  kvh: jax.Array
  ranges: tuple
  num_stages: int

  def slot(self, j):
    """The ring slot that holds kv tile j."""
    return lax.rem(j - self.ranges[0], self.num_stages)


def q_tile_program(rng_ref, groups: int, num_stages: int) -> QTileProgram:
  """This CTA's QTileProgram; grids are ("q", "b", "h") with the heaviest (latest) q tiles first, as they
  do the most work under a causal mask and launching them first keeps the last wave short."""
  i = lax.axis_size("q") - 1 - lax.axis_index("q")
  b, h = lax.axis_index("b"), lax.axis_index("h")
  return QTileProgram(lax.axis_index("wg"), i, b, h, lax.div(h, groups), ranges_of(rng_ref, b, i), num_stages)


def kv_producer(prog: QTileProgram, block_k: int, has_seg: bool, k_ref, v_ref, kseg_ref, k_smem, v_smem,
                kseg_smem, k_bar, v_bar, k_free, v_free):
  """The producer warpgroup of a q-tile kernel: copies K (with its segment ids) and V of every visited kv
  tile into the ring, waiting for a slot's previous tile to be freed by both consumers."""
  start, _, _, end = prog.ranges
  slot, b, bk = prog.slot, prog.b, block_k

  @pl.when(prog.wg == PRODUCER)
  def _producer():
    plgpu.set_max_registers(PRODUCER_REGS, action="decrease")

    @pl.loop(start, end)
    def _(j):
      s, reuse = slot(j), j - start >= prog.num_stages
      kv = (b, pl.ds(j * bk, bk), prog.kvh)
      pl.when(reuse)(lambda: plgpu.barrier_wait(k_free.at[s]))
      plgpu.copy_gmem_to_smem(k_ref.at[kv], k_smem.at[s], k_bar.at[s])
      if has_seg:
        plgpu.copy_gmem_to_smem(kseg_ref.at[b, pl.ds(j * bk, bk)], kseg_smem.at[s], k_bar.at[s])
      pl.when(reuse)(lambda: plgpu.barrier_wait(v_free.at[s]))
      plgpu.copy_gmem_to_smem(v_ref.at[kv], v_smem.at[s], v_bar.at[s])

    drain(jnp.maximum(start, end - prog.num_stages), end, lambda j: (k_free.at[slot(j)], v_free.at[slot(j)]))


__all__ = ["PRODUCER", "PRODUCER_REGS", "QTileProgram", "consumers", "drain", "kv_producer", "load",
           "q_tile_program", "ranges_of"]
