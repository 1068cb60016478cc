"""FlashAttention for Hopper (sm_90a) as Pallas Mosaic GPU kernels: TMA, wgmma, warp specialisation.

FlashAttention-3 (Shah et al., arXiv 2407.08608) in Pallas' Mosaic GPU dialect. A CTA owns 2 * block_q query
rows of one head and runs three warpgroups: a producer that only issues TMA copies of K/V tiles into a ring
of `num_stages` shared-memory slots, and two consumers of block_q rows each, which hand registers over from
the producer with setmaxnreg, multiply with wgmma and run ping-pong (forward.py). The backward pass is two
kernels of the same shape (backward.py): dK/dV per kv tile (summed over the G query heads of a kv head, so
GQA never repeats K/V) and dQ per q tile.

Every kernel walks exactly the tile ranges of attention.mask.block_map (causal and window masks skip tiles),
narrowed per batch row by the tiles' segment-id ranges (ranges.py); the element-wise rule is
mask.element_mask. Interpret mode runs the same kernels on the CPU, with the hardware-only operations
replaced by their arithmetic (hw.py).

The package, one concern per module:
  configs.py   KernelConfig, the default table, the shared-memory budget
  hw.py        the hardware-only operations and their interpreter stand-ins
  pipeline.py  the warp-specialised skeleton: register split, program position, K/V producer
  forward.py   the forward kernel;  backward.py  the dQ and dK/dV kernels
  ranges.py    per-batch tile ranges;  launch.py  scratch, barriers and grids of the three launches
  flash.py     the checks and tiles of a call, and FLASH (attention.gpu_flash pads, launches, slices)
"""

from attention.gpu_flash import Configs
from attention.pallas_mgpu.configs import KernelConfig, default_configs, padded_head_dim
from attention.pallas_mgpu.flash import FLASH

# The public functions (arguments and results: attention.flash_vjp), plus `interpret` and `configs`.
flash_forward = FLASH.forward
flash_backward = FLASH.backward
flash_attention_with_lse = FLASH.attention_with_lse
flash_attention = FLASH.attention

__all__ = ["FLASH", "Configs", "KernelConfig", "default_configs", "flash_attention", "flash_attention_with_lse",
           "flash_backward", "flash_forward", "padded_head_dim"]
