"""pallas_mgpu's tile configurations: the per-kernel KernelConfig, the default table and the shared-memory
budget every configuration is checked against before a launch."""

from __future__ import annotations

import dataclasses

from attention.gpu_flash import Configs
from attention.kernel_utils import round_up
from attention.mask import BlockSizes

SMEM_BYTES = 227 * 1024  # Hopper's shared memory per CTA


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """Tiles of one kernel: block_q rows per consumer warpgroup, block_k, shared-memory ring depth.

  pipeline_qk (forward only): issue the next tile's QK^T before the current softmax.
  """

  block_q: int
  block_k: int
  num_stages: int = 2
  pipeline_qk: bool = True

  def __post_init__(self):
    for name in ("block_q", "block_k"):
      b = getattr(self, name)
      if not isinstance(b, int) or b < 64 or b & (b - 1):
        raise ValueError(f"pallas_mgpu needs {name} to be a power of two >= 64, got {b!r}")
    if not isinstance(self.num_stages, int) or self.num_stages < 1:
      raise ValueError(f"pallas_mgpu needs num_stages >= 1, got {self.num_stages!r}")


# Padded head dim -> Configs (one KernelConfig per kernel: forward, dK/dV, dQ), sized by registers (a
# consumer holds its [block, H] float32 accumulators, two in dK/dV, plus one or two [block_q, block_k] logit
# tiles) and shared memory (smem_bytes <= 227 KB). Not yet tuned on a GPU: benchmarks/gpu_check.py --sweep
# times alternatives.
_DEFAULTS = {
    64: Configs(KernelConfig(64, 128, 2), KernelConfig(64, 64, 2), KernelConfig(64, 64, 2)),
    128: Configs(KernelConfig(64, 128, 2), KernelConfig(64, 64, 2), KernelConfig(64, 64, 2)),
    192: Configs(KernelConfig(64, 64, 2), KernelConfig(64, 64, 1), KernelConfig(64, 64, 1)),
    256: Configs(KernelConfig(64, 64, 2), KernelConfig(64, 64, 1), KernelConfig(64, 64, 1)),
}


def padded_head_dim(h: int) -> int:
  """Head dims are zero-padded to a multiple of 64: one 128-byte swizzle row of a 2-byte dtype."""
  if h > 256:
    raise NotImplementedError(f"pallas_mgpu supports head dims up to 256, got {h}")
  return round_up(h, 64)


def default_configs(head_dim: int) -> Configs:
  """The default table entry for a (q/k or v) head dim."""
  return _DEFAULTS[padded_head_dim(head_dim)]


def smem_bytes(c: KernelConfig, kernel: str, hp: int, hvp: int, has_seg: bool) -> int:
  """Shared memory one CTA of `kernel` allocates (2-byte tiles; int32 segment ids; float32 rows)."""
  bq, bk, st = c.block_q, c.block_k, c.num_stages
  if kernel == "fwd":
    tiles = 2 * bq * hp + st * bk * (hp + hvp) + (2 * bq * hvp if hvp != hp else 0)
    return 2 * tiles + 4 * 2 * bq + (4 * (2 * bq + st * bk) if has_seg else 0)
  if kernel == "dq":
    return 2 * (2 * bq * (hp + hvp) + st * bk * (hp + hvp)) + 4 * 4 * bq + (4 * (2 * bq + st * bk) if has_seg else 0)
  return 2 * (2 * bk * (hp + hvp) + st * bq * (hp + hvp)) + 4 * 2 * st * bq + (4 * (2 * bk + st * bq) if has_seg else 0)


def resolve_configs(hp: int, hvp: int, has_seg: bool, block_sizes: BlockSizes | None,
                    configs: Configs | None) -> Configs:
  """The Configs of one call at padded head dims hp/hvp, checked against the shared-memory budget.

  configs (explicit, e.g. a benchmark sweep) wins; else the default table, with block_sizes setting
  block_q/block_k of all three kernels.
  """
  if configs is not None:
    if not isinstance(configs, Configs) or not all(
        isinstance(c, KernelConfig) for c in (configs.fwd, configs.dkv, configs.dq)):
      raise ValueError(f"pallas_mgpu configs must be a Configs of pallas_mgpu.KernelConfig, got {configs!r}")
    cfg = configs
  else:
    cfg = default_configs(max(hp, hvp))
    if block_sizes is not None:
      rep = lambda c: dataclasses.replace(c, block_q=block_sizes.block_q, block_k=block_sizes.block_k)
      cfg = Configs(rep(cfg.fwd), rep(cfg.dkv), rep(cfg.dq))
  for name, c in (("fwd", cfg.fwd), ("dkv", cfg.dkv), ("dq", cfg.dq)):
    used = smem_bytes(c, name, hp, hvp, has_seg)
    if used > SMEM_BYTES:
      raise ValueError(f"pallas_mgpu {name} config {c} needs {used} bytes of shared memory (> {SMEM_BYTES}) "
                       f"at head dims {hp}/{hvp}; use smaller tiles or fewer stages")
  return cfg


__all__ = ["SMEM_BYTES", "KernelConfig", "default_configs", "padded_head_dim", "resolve_configs", "smem_bytes"]
