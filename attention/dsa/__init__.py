"""DeepSeek Sparse Attention (DSA): lightning indexer, top-k selection and attention over the selected keys.

DeepSeek-AI 2025, "DeepSeek-V3.2-Exp: Boosting Long-Context Efficiency with DeepSeek Sparse Attention".
The ops live in attention.dsa.api (topk_indices, sparse_attend and their impl tables), the indexer in
attention.dsa.indexer, its training loss in attention.dsa.losses and the model-facing self-attention (one
device or context parallel) in attention.dsa.context; this package only re-exports them.
"""

from attention.dsa.api import SPARSE_REGISTRY, TOPK_REGISTRY, sparse_attend, topk_indices
from attention.dsa.context import dsa_self_attention
from attention.dsa.indexer import indexer_rope, indexer_scores, quantize_rows
from attention.dsa.losses import indexer_kl_loss, indexer_kl_terms
from attention.dsa.sparse_reference import selection_mask

__all__ = ["SPARSE_REGISTRY", "TOPK_REGISTRY", "dsa_self_attention", "indexer_kl_loss", "indexer_kl_terms",
           "indexer_rope", "indexer_scores", "quantize_rows", "selection_mask", "sparse_attend", "topk_indices"]
