"""DSA: lightning indexer, top-k selection, sparse attention (reference / xla), indexer KL loss, decoding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention import Mask, attend
from attention.dsa import (SPARSE_REGISTRY, indexer_kl_loss, indexer_rope, indexer_scores, selection_mask,
                           sparse_attend, topk_indices)
from attention.dsa.decode import decode_step, write_cache
from attention.rope import rope_frequencies
from attention.testing import random_qkv, rel_err


def _normal(key, shape, dtype=jnp.float32):
  return jax.random.normal(key, shape, jnp.float32).astype(dtype)


def _indexer_inputs(seed, b, t, s, hi, di, integer=False):
  ks = jax.random.split(jax.random.key(seed), 3)
  if integer:  # small integers: exact float32 scores with many ties
    draw = lambda k, shape: jax.random.randint(k, shape, -2, 3).astype(jnp.float32)
  else:
    draw = _normal
  return draw(ks[0], (b, t, hi, di)), draw(ks[1], (b, s, di)), draw(ks[2], (b, t, hi))


def _np_scores(q_idx, k_idx, w):
  q, k, w = (np.asarray(x, np.float64) for x in (q_idx, k_idx, w))
  return np.einsum("btj,btjs->bts", w, np.maximum(np.einsum("btjd,bsd->btjs", q, k), 0))


def _np_visible(mask, t, s, q_offset=0, seg=None, kv_seg=None):
  qp = np.arange(t)[:, None] + q_offset
  kp = np.arange(s)[None, :]
  vis = np.ones((t, s), bool)
  if mask.causal:
    vis &= kp <= qp
  if mask.window is not None:
    vis &= (kp >= qp - mask.window[0]) & (kp <= qp + mask.window[1])
  vis = np.broadcast_to(vis, (1 if seg is None else seg.shape[0], t, s))
  if seg is not None:
    vis = vis & (np.asarray(seg)[:, :, None] == np.asarray(kv_seg)[:, None, :])
  return vis


def _np_topk(score, visible, top_k):
  """Stable argsort by (-score, index) over visible keys, -1 padded."""
  b, t, _ = score.shape
  out = -np.ones((b, t, top_k), np.int32)
  visible = np.broadcast_to(visible, score.shape)
  for bi in range(b):
    for ti in range(t):
      keys = np.nonzero(visible[bi, ti])[0]
      order = keys[np.argsort(-score[bi, ti, keys], kind="stable")][:top_k]
      out[bi, ti, :len(order)] = order
  return out


def test_indexer_scores_match_numpy():
  q_idx, k_idx, w = _indexer_inputs(0, 2, 5, 7, 3, 16)
  got = indexer_scores(q_idx, k_idx, w, score_dtype=jnp.float32)
  np.testing.assert_allclose(got, _np_scores(q_idx, k_idx, w), rtol=1e-5, atol=1e-5)
  got_bf16 = indexer_scores(q_idx, k_idx, w)
  np.testing.assert_allclose(got_bf16, _np_scores(q_idx, k_idx, w), rtol=2e-2, atol=0.1)


def test_fp8_scores_accuracy():
  """float8_e4m3fn with per-row scales: scores within a few percent and the same keys mostly selected."""
  q_idx, k_idx, w = _indexer_inputs(1, 1, 64, 512, 4, 64)
  w = jnp.abs(w)
  exact = _np_scores(q_idx, k_idx, w)
  fp8 = np.asarray(indexer_scores(q_idx, k_idx, w, score_dtype=jnp.float8_e4m3fn))
  assert np.linalg.norm(fp8 - exact) / np.linalg.norm(exact) < 0.05
  idx_f32 = topk_indices(q_idx, k_idx, w, top_k=64, mask=Mask(), score_dtype=jnp.float32)
  idx_fp8 = topk_indices(q_idx, k_idx, w, top_k=64, mask=Mask(), score_dtype=jnp.float8_e4m3fn)
  recall = np.mean([len(np.intersect1d(a, b)) / 64 for a, b in zip(np.asarray(idx_f32)[0], np.asarray(idx_fp8)[0])])
  assert recall > 0.85, recall


@pytest.mark.parametrize("impl", ["reference", "xla"])
@pytest.mark.parametrize("mask,q_offset,top_k", [
    (Mask(causal=True), 0, 6),
    (Mask(causal=True), 3, 40),  # top_k > S: trailing -1
    (Mask(window=(4, 2)), 0, 5),
    (Mask(causal=True, window=(3, 0)), 2, 8),
    (Mask(), 0, 7),
])
def test_topk_matches_numpy(impl, mask, q_offset, top_k):
  b, t, s = 2, 13, 17
  q_idx, k_idx, w = _indexer_inputs(2, b, t, s, 2, 4, integer=True)
  got = topk_indices(q_idx, k_idx, w, top_k=top_k, mask=mask, q_offset=q_offset, impl=impl,
                     score_dtype=jnp.float32, chunk_size=4)
  assert got.dtype == jnp.int32 and got.shape == (b, t, top_k)
  want = _np_topk(_np_scores(q_idx, k_idx, w), _np_visible(mask, t, s, q_offset), top_k)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mask,q_offset", [
    (Mask(causal=True), 0), (Mask(causal=True), jnp.array([0, 6], jnp.int32)), (Mask(window=(5, 3)), 2),
    (Mask(), 0)])
def test_topk_blocked_merge_matches_numpy(mask, q_offset):
  """Many key blocks (4 keys each) merged into the running top-k: same keys, order and ties as one sort."""
  from attention.dsa.topk import topk_xla
  b, t, s, top_k = 2, 11, 18, 6
  q_idx, k_idx, w = _indexer_inputs(23, b, t, s, 2, 3, integer=True)
  seg = jnp.array([[0] * 9 + [1] * 9, [0] * 18], jnp.int32)
  got = topk_xla(q_idx, k_idx, w, top_k=top_k, mask=mask, segment_ids=seg[:, :t], kv_segment_ids=seg,
                 q_offset=q_offset, score_dtype=jnp.float32, chunk_size=3, interpret=False, block_k=4)
  score = _np_scores(q_idx, k_idx, w)
  for bi in range(b):
    off = int(np.asarray(q_offset).reshape(-1)[bi % np.size(q_offset)])
    want = _np_topk(score[bi:bi + 1], _np_visible(mask, t, s, off, seg[bi:bi + 1, :t], seg[bi:bi + 1]), top_k)
    np.testing.assert_array_equal(got[bi:bi + 1], want)


def test_topk_segments_and_batched_offset():
  b, t, s = 2, 9, 9
  q_idx, k_idx, w = _indexer_inputs(3, b, t, s, 3, 8, integer=True)
  seg = jnp.array([[0] * 4 + [1] * 5, [0] * 7 + [2] * 2], jnp.int32)
  got = topk_indices(q_idx, k_idx, w, top_k=4, segment_ids=seg, score_dtype=jnp.float32, chunk_size=2)
  want = _np_topk(_np_scores(q_idx, k_idx, w), _np_visible(Mask(causal=True), t, s, 0, seg, seg), 4)
  np.testing.assert_array_equal(got, want)
  off = jnp.array([0, 5], jnp.int32)
  got = topk_indices(q_idx, k_idx, w, top_k=4, q_offset=off, score_dtype=jnp.float32)
  for bi in range(b):
    want = _np_topk(_np_scores(q_idx, k_idx, w)[bi:bi + 1], _np_visible(Mask(causal=True), t, s, int(off[bi])), 4)
    np.testing.assert_array_equal(got[bi:bi + 1], want)


def _np_with_local(score, visible, top_k, w, q_offset=0):
  """Brute force of local_keys=w: the w most recent visible keys (nearest first, -1 where hidden), then the
  top_k by score among the visible keys farther back than the window."""
  b, t, s = score.shape
  qp = np.arange(t)[:, None] + q_offset
  kp = np.arange(s)[None, :]
  visible = np.broadcast_to(visible, score.shape)
  local = -np.ones((b, t, w), np.int32)
  for bi in range(b):
    for ti in range(t):
      for j in range(w):
        key = int(qp[ti, 0]) - j
        if 0 <= key < s and visible[bi, ti, key]:
          local[bi, ti, j] = key
  return np.concatenate([local, _np_topk(score, visible & (kp <= qp - w), top_k)], axis=-1)


@pytest.mark.parametrize("impl", ["reference", "xla"])
@pytest.mark.parametrize("mask,q_offset,top_k,w,segmented", [
    (Mask(causal=True), 0, 4, 3, False),
    (Mask(causal=True), 5, 3, 6, True),
    (Mask(causal=True, window=(7, 0)), 2, 3, 4, False),  # the window hides far keys and part of the local run
    (Mask(causal=True), 0, 30, 2, False),  # top_k past the visible keys: -1 after them
])
def test_topk_local_keys_match_brute_force(impl, mask, q_offset, top_k, w, segmented):
  """local_keys: the window first, then exactly the top_k among the keys behind it (ties as topk_indices)."""
  b, t, s = 2, 13, 19
  q_idx, k_idx, w_idx = _indexer_inputs(40, b, t, s, 2, 4, integer=True)
  seg = kv_seg = None
  if segmented:
    kv_seg = jnp.array([[0] * 10 + [1] * 9, [0] * 3 + [1] * 16], jnp.int32)
    seg = kv_seg[:, q_offset:q_offset + t]
  got = topk_indices(q_idx, k_idx, w_idx, top_k=top_k, mask=mask, q_offset=q_offset, impl=impl,
                     score_dtype=jnp.float32, chunk_size=4, local_keys=w, segment_ids=seg, kv_segment_ids=kv_seg)
  assert got.dtype == jnp.int32 and got.shape == (b, t, w + top_k)
  score = _np_scores(q_idx, k_idx, w_idx)
  for bi in range(b):
    vis = _np_visible(mask, t, s, q_offset, None if seg is None else seg[bi:bi + 1],
                      None if seg is None else kv_seg[bi:bi + 1])
    np.testing.assert_array_equal(got[bi:bi + 1], _np_with_local(score[bi:bi + 1], vis, top_k, w, q_offset))


def test_local_keys_sparse_attention_equals_dense_when_everything_is_selected():
  """A window as long as the sequence selects every causal key: sparse attention is causal attention."""
  b, t, n, kh, h = 1, 9, 2, 1, 8
  q, k, v, _ = random_qkv(41, b, t, t, n, kh, h)
  q_idx, k_idx, w = _indexer_inputs(42, b, t, t, 2, 4)
  idx = topk_indices(q_idx, k_idx, w, top_k=2, local_keys=t)
  np.testing.assert_allclose(sparse_attend(q, k, v, idx), attend(q, k, v, mask=Mask(causal=True)),
                             rtol=1e-5, atol=1e-5)


def test_topk_bf16_is_deterministic_and_sorted():
  q_idx, k_idx, w = _indexer_inputs(4, 1, 33, 33, 4, 16)
  a = topk_indices(q_idx, k_idx, w, top_k=8, chunk_size=5)
  b = topk_indices(q_idx, k_idx, w, top_k=8, chunk_size=16)
  np.testing.assert_array_equal(a, b)
  score = np.asarray(indexer_scores(q_idx, k_idx, w))
  a = np.asarray(a)[0]
  for t in range(33):
    sel = a[t][a[t] >= 0]
    assert len(sel) == min(8, t + 1) and np.all(sel <= t)
    assert np.all(np.diff(score[0, t, sel]) <= 0)


def _grads(f, q, k, v, do):
  out, vjp = jax.vjp(f, q, k, v)
  return (out, *vjp(do))


def _assert_close(got, want, tol):
  for g, w_ in zip(got, want):
    assert rel_err(g, w_) < tol, rel_err(g, w_)


@pytest.mark.parametrize("n,kh", [(4, 4), (4, 2), (4, 1)])
def test_full_topk_equals_causal_attend(n, kh):
  b, t, h = 2, 19, 16
  q, k, v, do = random_qkv(5, b, t, t, n, kh, h, h)
  q_idx, k_idx, w = _indexer_inputs(6, b, t, t, 2, 8)
  idx = topk_indices(q_idx, k_idx, w, top_k=t + 3)
  want = _grads(lambda q, k, v: attend(q, k, v, mask=Mask(causal=True), impl="reference"), q, k, v, do)
  got = _grads(lambda q, k, v: sparse_attend(q, k, v, idx, impl="xla"), q, k, v, do)
  _assert_close(got, want, 1e-5)


def _random_indices(seed, b, t, s, top_k, frac_empty=0.3):
  """Distinct keys per row, some slots -1, some rows entirely -1."""
  rng = np.random.default_rng(seed)
  idx = np.stack([np.stack([rng.permutation(s)[:top_k] for _ in range(t)]) for _ in range(b)]).astype(np.int32)
  idx[rng.random(idx.shape) < frac_empty] = -1
  idx[0, 1] = -1  # a query that sees nothing
  return jnp.asarray(idx)


@pytest.mark.parametrize("impl", ["reference", "xla"])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_random_indices_match_selection_mask(impl, dtype, tol):
  b, t, s, n, kh, h, hv, top_k = 2, 11, 23, 6, 2, 16, 8, 7
  q, k, v, do = random_qkv(7, b, t, s, n, kh, h, hv, dtype)
  idx = _random_indices(8, b, t, s, top_k)
  vis = selection_mask(idx, s)
  np.testing.assert_array_equal(vis.sum(-1), (np.asarray(idx) >= 0).sum(-1))

  def oracle(q, k, v):  # dense attention under the selection mask, float32 numpy-checked reference
    from attention.reference import attention_with_lse
    return attention_with_lse(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), vis,
                              h ** -0.5)[0]

  want = _grads(oracle, q, k, v, do.astype(jnp.float32))
  got = _grads(lambda q, k, v: sparse_attend(q, k, v, idx, impl=impl), q, k, v, do)
  _assert_close(got, want, tol)
  np.testing.assert_array_equal(got[0][0, 1], 0)  # empty row -> zeros
  assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in got)


def test_xla_chunking_does_not_change_results():
  from attention.dsa.sparse_xla import sparse_xla
  q, k, v, do = random_qkv(9, 1, 10, 12, 2, 1, 8, 8)
  idx = _random_indices(10, 1, 10, 12, 5)
  a = _grads(lambda q, k, v: sparse_xla(q, k, v, idx, scale=0.3, interpret=False, chunk_size=3), q, k, v, do)
  b = _grads(lambda q, k, v: sparse_xla(q, k, v, idx, scale=0.3, interpret=False, chunk_size=10), q, k, v, do)
  _assert_close(a, b, 1e-6)


def _np_kl(q, k, q_idx, k_idx, w, visible):
  """Dense KL(p || softmax(score)) per query, averaged over queries that see a key (float64 NumPy)."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  b, t, n, h = q.shape
  kh = k.shape[2]
  logits = np.einsum("btkgh,bskh->btkgs", q.reshape(b, t, kh, n // kh, h), k) / np.sqrt(h)
  logits = np.where(visible[:, :, None, None], logits, -np.inf)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  p = (e / e.sum(-1, keepdims=True)).sum((2, 3))
  p /= p.sum(-1, keepdims=True)
  score = np.where(visible, _np_scores(q_idx, k_idx, w), -np.inf)
  logq = score - score.max(-1, keepdims=True)
  logq -= np.log(np.exp(logq).sum(-1, keepdims=True))
  kl = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.where(visible, logq, 0)), 0).sum(-1)
  return kl.mean()


@pytest.mark.parametrize("segmented", [False, True])
def test_kl_dense_and_sparse_match_numpy(segmented):
  b, t, n, kh, h = 2, 12, 4, 2, 8
  q, k, _, _ = random_qkv(11, b, t, t, n, kh, h, h)
  q_idx, k_idx, w = _indexer_inputs(12, b, t, t, 3, 8)
  seg = jnp.array([[0] * 5 + [1] * 7, [0] * 12], jnp.int32) if segmented else None
  vis = np.broadcast_to(_np_visible(Mask(causal=True), t, t, 0, seg, seg), (b, t, t))
  kw = dict(segment_ids=seg, chunk_size=5)
  got = indexer_kl_loss(q, k, q_idx, k_idx, w, **kw)
  np.testing.assert_allclose(got, _np_kl(q, k, q_idx, k_idx, w, vis), rtol=1e-5)
  idx = topk_indices(q_idx, k_idx, w, top_k=5)  # may select other documents' keys: the loss masks them
  sel = np.asarray(selection_mask(idx, t)) & vis
  got = indexer_kl_loss(q, k, q_idx, k_idx, w, indices=idx, **kw)
  np.testing.assert_allclose(got, _np_kl(q, k, q_idx, k_idx, w, sel), rtol=1e-5)
  full = topk_indices(q_idx, k_idx, w, top_k=t, segment_ids=seg)  # all visible keys selected: sparse == dense
  np.testing.assert_allclose(indexer_kl_loss(q, k, q_idx, k_idx, w, indices=full, **kw),
                             indexer_kl_loss(q, k, q_idx, k_idx, w, **kw), rtol=1e-5)


@pytest.mark.parametrize("mask,q_offset", [(Mask(causal=True), 5), (Mask(causal=True, window=(4, 0)), (5, 2))])
def test_kl_with_q_offset_matches_numpy(mask, q_offset):
  """Queries 7 long at positions q_offset.. against 12 keys (a chunk or a context shard), with segments."""
  b, t, s, n, kh, h = 2, 7, 12, 4, 2, 8
  q, _, _, _ = random_qkv(24, b, t, t, n, kh, h, h)
  _, k, _, _ = random_qkv(25, b, s, s, n, kh, h, h)
  q_idx, _, w = _indexer_inputs(26, b, t, t, 3, 8)
  _, k_idx, _ = _indexer_inputs(27, b, s, s, 3, 8)
  kv_seg = jnp.array([[0] * 6 + [1] * 6, [0] * 12], jnp.int32)
  off = np.broadcast_to(np.asarray(q_offset), (b,))
  seg = jnp.stack([kv_seg[i, off[i]:off[i] + t] for i in range(b)])
  vis = np.concatenate([_np_visible(mask, t, s, int(off[i]), seg[i:i + 1], kv_seg[i:i + 1]) for i in range(b)])
  kw = dict(mask=mask, segment_ids=seg, kv_segment_ids=kv_seg, chunk_size=3,
            q_offset=q_offset if isinstance(q_offset, int) else jnp.asarray(q_offset, jnp.int32))
  np.testing.assert_allclose(indexer_kl_loss(q, k, q_idx, k_idx, w, **kw), _np_kl(q, k, q_idx, k_idx, w, vis),
                             rtol=1e-5)
  idx = topk_indices(q_idx, k_idx, w, top_k=4, mask=mask, q_offset=kw["q_offset"], segment_ids=seg,
                     kv_segment_ids=kv_seg, score_dtype=jnp.float32)
  sel = np.asarray(selection_mask(idx, s)) & vis
  np.testing.assert_allclose(indexer_kl_loss(q, k, q_idx, k_idx, w, indices=idx, **kw),
                             _np_kl(q, k, q_idx, k_idx, w, sel), rtol=1e-5)


def test_kl_zero_when_indexer_reproduces_p_and_grads_reach_only_indexer():
  b, t, h = 1, 10, 8
  ks = jax.random.split(jax.random.key(13), 2)
  q = jnp.abs(_normal(ks[0], (b, t, 1, h))) + 0.1  # positive, so relu(q_idx . k_idx) = q . k
  k = jnp.abs(_normal(ks[1], (b, t, 1, h))) + 0.1
  q_idx, k_idx, w = q * h ** -0.5, k[:, :, 0], jnp.ones((b, t, 1))  # score == the main attention logits
  for idx in (None, topk_indices(q_idx, k_idx, w, top_k=4)):
    loss, grads = jax.value_and_grad(
        lambda *a: indexer_kl_loss(*a, indices=idx), argnums=(0, 1, 2, 3, 4))(q, k, q_idx, k_idx, w)
    assert abs(float(loss)) < 1e-6
    for g in grads[2:]:  # at the optimum the indexer's gradient vanishes too
      np.testing.assert_allclose(g, 0, atol=1e-5)
  q_idx2, k_idx2, w2 = _indexer_inputs(14, b, t, t, 2, 8)
  for idx in (None, topk_indices(q_idx2, k_idx2, w2, top_k=4)):
    loss, grads = jax.value_and_grad(
        lambda *a: indexer_kl_loss(*a, indices=idx), argnums=(0, 1, 2, 3, 4))(q, k, q_idx2, k_idx2, w2)
    assert float(loss) > 1e-3
    np.testing.assert_array_equal(grads[0], 0)  # no gradient to the main model's q, k
    np.testing.assert_array_equal(grads[1], 0)
    assert all(float(jnp.abs(g).max()) > 1e-4 for g in grads[2:])


def test_kl_grad_matches_finite_difference_chunked():
  b, t, n, h = 1, 9, 2, 4
  q, k, _, _ = random_qkv(15, b, t, t, n, 1, h, h)
  q_idx, k_idx, w = _indexer_inputs(16, b, t, t, 2, 4)
  f = lambda w: indexer_kl_loss(q, k, q_idx, k_idx, w, chunk_size=4)
  g = jax.grad(f)(w)
  d = _normal(jax.random.key(17), w.shape)
  eps = 1e-3
  fd = (f(w + eps * d) - f(w - eps * d)) / (2 * eps)
  np.testing.assert_allclose(jnp.sum(g * d), fd, rtol=1e-2)


def test_indexer_rope_is_partial_and_relative():
  b, t, hi, di, rd = 1, 6, 2, 8, 4
  q_idx, k_idx, _ = _indexer_inputs(18, b, t, t, hi, di)
  inv_freq, _ = rope_frequencies(rd)
  pos = jnp.arange(t)
  qr, kr = indexer_rope(q_idx, k_idx, pos, pos, inv_freq, rotary_dim=rd)
  np.testing.assert_array_equal(qr[..., rd:], q_idx[..., rd:])
  np.testing.assert_array_equal(kr[..., rd:], k_idx[..., rd:])
  qs, ks = indexer_rope(q_idx, k_idx, pos + 7, pos + 7, inv_freq, rotary_dim=rd)  # shift all positions
  np.testing.assert_allclose(indexer_scores(qs, ks, jnp.ones((b, t, hi)), score_dtype=jnp.float32),
                             indexer_scores(qr, kr, jnp.ones((b, t, hi)), score_dtype=jnp.float32), atol=1e-4)
  assert not np.allclose(qr[..., :rd], q_idx[..., :rd])


@pytest.mark.parametrize("local_keys", [0, 3])
def test_decode_token_by_token_matches_full_sequence(local_keys):
  b, t, n, kh, h, hi, di, top_k = 2, 12, 4, 2, 8, 2, 8, 5
  q, k, v, _ = random_qkv(19, b, t, t, n, kh, h, h)
  q_idx, k_idx, w = _indexer_inputs(20, b, t, t, hi, di)
  idx_full = topk_indices(q_idx, k_idx, w, top_k=top_k, local_keys=local_keys)
  out_full = sparse_attend(q, k, v, idx_full)
  cap = 16  # cache capacity > T: unwritten slots must never be selected
  caches = [jnp.zeros((b, cap) + x.shape[2:], x.dtype) for x in (k, v, k_idx)]
  step = jax.jit(lambda *a, pos: decode_step(*a, pos=pos, top_k=top_k, local_keys=local_keys))
  for i in range(t):
    caches = [write_cache(c, x[:, i:i + 1], i) for c, x in zip(caches, (k, v, k_idx))]
    out, idx = step(q[:, i:i + 1], caches[0], caches[1], q_idx[:, i:i + 1], caches[2], w[:, i:i + 1],
                    pos=jnp.full((b,), i, jnp.int32))
    np.testing.assert_array_equal(idx[:, 0], idx_full[:, i])
    np.testing.assert_allclose(out[:, 0], out_full[:, i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call,match", [
    (lambda a: sparse_attend(a["q"][0], a["k"], a["v"], a["idx"]), "q must have rank 4"),
    (lambda a: sparse_attend(a["q"], a["k"], a["v"], a["idx"].astype(jnp.int16)), "indices must be int32"),
    (lambda a: sparse_attend(a["q"], a["k"], a["v"], a["idx"][:, :2]), "indices must have shape"),
    (lambda a: sparse_attend(a["q"], a["k"], a["v"], a["idx"].at[0, 1, 0].set(4)),
     r"indices must lie in \[-1, S=4\).*got 4"),
    (lambda a: sparse_attend(a["q"], a["k"], a["v"], a["idx"].at[0, 1, 0].set(-2)), r"indices must lie.*got -2"),
    (lambda a: sparse_attend(a["q"][:, :, :3], a["k"], a["v"], a["idx"]), "multiple of kv heads"),
    (lambda a: sparse_attend(a["q"], a["k"], a["v"], a["idx"], impl="nope"), "impl='nope'"),
    (lambda a: topk_indices(a["qi"], a["ki"], a["w"], top_k=0), "top_k must be an int >= 1, got 0"),
    (lambda a: topk_indices(a["qi"], a["ki"][..., :2], a["w"], top_k=2), "k_idx must have shape"),
    (lambda a: topk_indices(a["qi"], a["ki"], a["w"][..., :1], top_k=2), "w must have shape"),
    (lambda a: topk_indices(a["qi"], a["ki"], a["w"], top_k=2, impl="bogus"), "impl='bogus'"),
    (lambda a: topk_indices(a["qi"], a["ki"], a["w"], top_k=2, score_dtype=jnp.int8), "score_dtype"),
    (lambda a: topk_indices(a["qi"], a["ki"], a["w"], top_k=2, local_keys=-1), "local_keys must be an int >= 0"),
    (lambda a: topk_indices(a["qi"], a["ki"], a["w"], top_k=2, mask=Mask(), local_keys=2),
     "local_keys=2 needs a causal mask"),
])
def test_validation_errors(call, match):
  q, k, v, _ = random_qkv(21, 1, 4, 4, 4, 2, 8, 8)
  qi, ki, w = _indexer_inputs(22, 1, 4, 4, 2, 4)
  args = dict(q=q, k=k, v=v, idx=jnp.zeros((1, 4, 2), jnp.int32), qi=qi, ki=ki, w=w)
  with pytest.raises(ValueError, match=match):
    call(args)


@pytest.mark.parametrize("impl", list(SPARSE_REGISTRY))
def test_traced_out_of_range_indices_count_as_empty_slots(impl):
  """Every impl (Pallas ones interpreted) gives the same answer for indices outside [0, S) under jit: those
  slots are ignored, exactly as -1 is; eagerly the same indices raise (test_validation_errors)."""
  b, t, s, n, kh, h = 1, 6, 9, 2, 1, 16
  q, k, v, do = random_qkv(31, b, t, s, n, kh, h)
  idx = _random_indices(32, b, t, s, 4, frac_empty=0.2)
  bad = idx.at[0, 2, 0].set(s).at[0, 3, 1].set(s + 100).at[0, 4, 2].set(-7)
  empty = jnp.where((bad >= 0) & (bad < s), bad, -1)
  run = jax.jit(lambda idx, q, k, v: sparse_attend(q, k, v, idx, impl=impl))
  want = _grads(lambda q, k, v: sparse_attend(q, k, v, empty, impl="reference"), q, k, v, do)
  got = _grads(functools.partial(run, bad), q, k, v, do)
  _assert_close(got, want, 1e-5)
