"""The public attention API: attend(), sparse_attend(), topk_indices() and the registry of implementations.

attend lives in attention.api, the DSA ops in attention.dsa.api, the table of impls in attention.registry;
this package only re-exports them.
"""

from attention.api import attend
from attention.checks import validate, validate_qkv
from attention.dsa import indexer_kl_loss, sparse_attend, topk_indices
from attention.mask import BlockMap, BlockSizes, Mask, attention_flops, block_map, element_mask
from attention.registry import REGISTRY, Impl, resolve_impl

__all__ = ["Mask", "BlockSizes", "BlockMap", "Impl", "REGISTRY", "attend", "attention_flops", "block_map",
           "element_mask", "resolve_impl", "validate", "validate_qkv", "indexer_kl_loss", "sparse_attend",
           "topk_indices"]
