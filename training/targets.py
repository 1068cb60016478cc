"""The target rules, one copy imported by the trainer (training.step) and by eval (perplexity, mlm).

Causal LM: position t predicts token t + 1 of the same document. Masked LM with ModernBERT's recipe
(Warner et al., 2024, arXiv 2412.13663: 30% of tokens selected, of which 80% become MASK, 10% a random
token, 10% stay), the 80/10/10 split of BERT (Devlin et al., 2019).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def lm_targets(batch):
  """Next-token targets for a packed batch: (inputs, targets [B, T], weights [B, T]).

  Position t predicts token t + 1 only inside the same document (segment id > 0 on both): the last token
  of a piece has no target, so nothing is learned across document boundaries. A window cut from one
  document (segment ids all 1) therefore scores every position but its last. An optional
  batch["loss_weights"] [B, T] (data.train_dataset's mqar_loss="answers") multiplies the weights.
  """
  tokens, seg = batch["tokens"], batch["segment_ids"]
  targets = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
  same = jnp.concatenate([(seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] > 0),
                          jnp.zeros_like(seg[:, :1], dtype=bool)], axis=1)
  weights = same.astype(jnp.float32)
  if "loss_weights" in batch:
    weights = weights * batch["loss_weights"].astype(jnp.float32)
  return batch, targets, weights


def mlm_targets(batch, rng, *, rate: float, mask_id: int, num_regular: int):
  """BERT/ModernBERT masking: (corrupted batch, targets = original tokens, weights on the selected tokens).

  Only ordinary tokens (ids < num_regular, not padding, BOS or EOS) can be selected.
  """
  tokens, seg = batch["tokens"], batch["segment_ids"]
  k_sel, k_kind, k_rand = jax.random.split(rng, 3)
  eligible = (seg > 0) & (tokens < num_regular)
  selected = eligible & (jax.random.uniform(k_sel, tokens.shape) < rate)
  kind = jax.random.uniform(k_kind, tokens.shape)
  random_tokens = jax.random.randint(k_rand, tokens.shape, 0, num_regular, dtype=tokens.dtype)
  corrupted = jnp.where(selected & (kind < 0.8), mask_id,
                        jnp.where(selected & (kind < 0.9), random_tokens, tokens))
  return dict(batch, tokens=corrupted), tokens, selected.astype(jnp.float32)
