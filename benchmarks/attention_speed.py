"""CPU forward time of the blockwise XLA path: block skipping and the dense baseline, side by side.

Method: one process, every function jitted and compiled first (warm-up call), then the median of
--repeats timed calls with block_until_ready. Ratios are what this measures; absolute CPU times only
describe this machine. B=1, N=8, H=64, float32 by default (the issue's shapes).

  python -m benchmarks.attention_speed [--causal_len=8192] [--window_len=16384] [--block=512]
"""

from __future__ import annotations

import argparse
import platform

import jax
import jax.numpy as jnp

from attention import BlockSizes, Mask, attend
from benchmarks.common import time_fn


def forward(mask, impl, block_sizes=None):
  if impl == "jax.nn":
    return jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=mask.causal, local_window_size=mask.window, implementation="xla"))
  return jax.jit(lambda q, k, v: attend(q, k, v, mask=mask, impl=impl, block_sizes=block_sizes))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--causal_len", type=int, default=8192)
  parser.add_argument("--window_len", type=int, default=16384)
  parser.add_argument("--window", type=int, default=128)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--block", type=int, default=0, help="xla tile size (0: the impl's default)")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  bs = BlockSizes(args.block, args.block) if args.block else None
  n, h = args.heads, args.head_dim
  print(f"# forward only, B=1, N={n}, H={h}, float32; {platform.processor() or 'cpu'}, "
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}")

  def timed(length, mask, impl):
    x = jax.random.normal(jax.random.PRNGKey(0), (1, length, n, h), jnp.float32)
    return time_fn(forward(mask, impl, bs), (x, x, x), reps=args.repeats)

  causal = Mask(causal=True)
  t_ours = timed(args.causal_len, causal, "xla")
  t_dense = timed(args.causal_len, causal, "jax.nn")
  print(f"causal L={args.causal_len}: xla {t_ours:.3f}s, jax.nn.dot_product_attention(xla) {t_dense:.3f}s "
        f"-> xla is {t_dense / t_ours:.1f}x faster")
  local = Mask(causal=True, window=(args.window, 0))
  t_causal = timed(args.window_len, causal, "xla")
  t_local = timed(args.window_len, local, "xla")
  print(f"L={args.window_len}: xla causal {t_causal:.3f}s, window=({args.window}, 0) {t_local:.3f}s "
        f"-> window is {t_causal / t_local:.1f}x faster")


if __name__ == "__main__":
  main()
