"""Conformance matrix: every FlashAttention kernel x every case, against the dense reference.

Each (impl, case) checks out, lse (+inf exactly on the rows that see no key), and dq, dk, dv of
sum(out * do) + sum(lse * dlse), so the lse output's gradient is checked everywhere. Pallas kernels run in
interpret mode, with small tiles so that short inputs span several tiles and partial tail tiles; cases
marked default_tiles use each kernel's own tile table instead. The reference result of a case is computed
once and shared by the three kernels.

The poisoning test proves on the CPU that skipped tiles are never read: K/V rows that lie in no visited
tile are set to NaN, and outputs and gradients must stay finite and equal to the clean run's.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention import REGISTRY, BlockSizes, Mask, attend
from attention.testing import out_lse_grads, random_qkv, reference_with_lse, rel_err, tolerance

# impl -> small tiles (each kernel's own constraints: Pallas GPU powers of two >= 16, TPU multiples of 128).
TILES = {"xla": BlockSizes(64, 32), "pallas_gpu": BlockSizes(16, 32), "pallas_tpu": BlockSizes(128, 128)}
IMPLS = list(TILES)
# The rows of attention.REGISTRY this matrix does not run, each with where it is checked instead. A new
# registry row must join TILES or this table: test_every_registry_row_is_in_the_matrix fails otherwise.
NOT_IN_MATRIX = {
    "reference": "the oracle the matrix compares against; tests/test_reference.py checks it against jax.nn",
    "pallas_mgpu": "bf16/fp16 only and 10-20 s per interpreted launch: tests/test_pallas_mgpu.py",
    "cudnn": "GPU only, no interpreter: tests/test_api.py (its errors), benchmarks/gpu_check.py (on a GPU)",
}


@dataclasses.dataclass(frozen=True)
class Case:
  """One attention problem: shapes, mask, positions, segment ids, dtype, cotangents."""

  b: int = 1
  t: int = 100
  s: int | None = None  # None: s = t
  n: int = 4
  k: int = 2
  h: int = 16
  hv: int | None = None  # None: hv = h
  mask: Mask = Mask(causal=True)
  q_offset: int | tuple[int, ...] = 0  # a tuple: a per-batch-row int32 array (traced)
  segments: str | None = None  # "sorted": packed documents; "no_keys": some query documents have no key
  dtype: str = "float32"
  default_tiles: bool = False
  zero_cotangent: bool = False
  seed: int = 0


CASES = {
    # Masks (GQA, T = S, not a tile multiple).
    "full": Case(mask=Mask()),
    "causal": Case(),
    "window_left": Case(mask=Mask(window=(20, 0))),
    "window_both_sides": Case(mask=Mask(window=(9, 13))),
    "causal_window": Case(mask=Mask(causal=True, window=(33, 0))),
    "window_wider_than_sequence": Case(mask=Mask(window=(500, 500))),
    "causal_diagonal_only": Case(mask=Mask(causal=True, window=(0, 0))),
    "window_zero": Case(mask=Mask(window=(0, 0))),
    # Heads.
    "gqa_4_to_1": Case(n=8, k=2, h=8),
    "mqa": Case(n=8, k=1, h=8),
    "mha": Case(n=8, k=8, h=8),
    # T != S and query positions.
    "decode_one_query": Case(b=2, t=1, s=777, q_offset=776),
    "decode_window": Case(b=2, t=1, s=777, mask=Mask(causal=True, window=(100, 0)), q_offset=700),
    "causal_top_left_t_lt_s": Case(t=90, s=250),
    "causal_t_gt_s": Case(t=250, s=90),
    "causal_offset_t_lt_s": Case(t=70, s=300, q_offset=230),
    "mqa_full_t_gt_s": Case(t=130, s=70, k=1, mask=Mask()),
    "per_row_offsets": Case(b=3, t=5, s=400, k=4, mask=Mask(causal=True, window=(64, 0)), q_offset=(0, 200, 395)),
    "traced_offsets_negative": Case(b=2, t=256, s=384, n=2, k=1, q_offset=(100, -70)),
    "negative_offset_empty_rows": Case(t=150, s=160, q_offset=-130),
    "window_past_every_key": Case(mask=Mask(window=(5, 0)), q_offset=200),
    # Segment ids.
    "segments_full": Case(b=2, t=128, mask=Mask(), segments="sorted"),
    "segments_causal": Case(b=2, t=128, segments="sorted"),
    "segments_causal_window": Case(b=2, t=128, mask=Mask(causal=True, window=(40, 0)), segments="sorted"),
    "segments_window_t_ne_s_mqa": Case(t=200, s=333, n=2, k=1, h=64, hv=128, mask=Mask(window=(50, 20)),
                                       segments="sorted"),
    "segments_without_keys": Case(b=2, t=96, n=2, k=1, mask=Mask(window=(30, 30)), segments="no_keys"),
    # Lengths that are not tile multiples, with each kernel's default tiles.
    "default_tiles_causal": Case(t=1000, n=2, k=1, default_tiles=True),
    "default_tiles_window_segments_t_ne_s": Case(t=1000, s=1537, n=2, k=1, mask=Mask(window=(300, 0)),
                                                 segments="sorted", default_tiles=True),
    # Head dims.
    "v_head_dim_differs": Case(s=120, h=24, hv=16),
    "head_dims_padded": Case(t=80, n=2, k=1, h=40, hv=24),
    # Dtypes.
    "bf16": Case(h=64, mask=Mask(causal=True, window=(50, 0)), dtype="bfloat16"),
    "fp16": Case(h=64, mask=Mask(window=(17, 5)), dtype="float16"),
    # Cotangents.
    "zero_cotangent": Case(n=2, k=1, h=8, zero_cotangent=True),
}


def _segments(case: Case, s: int):
  """q and kv segment ids [B, T], [B, S] of a case, or (None, None)."""
  if case.segments is None:
    return None, None
  rng = np.random.default_rng(case.seed)
  if case.segments == "sorted":  # packed documents of random lengths: some tiles see one document only
    q_seg = np.sort(rng.integers(0, 5, (case.b, case.t)), axis=1)
    kv_seg = q_seg if s == case.t else np.sort(rng.integers(0, 5, (case.b, s)), axis=1)
  else:  # four documents; queries of the last one find no key of theirs (rows see nothing)
    q_seg = np.repeat((np.arange(case.t) * 4 // case.t)[None], case.b, 0)
    kv_seg = np.where(q_seg == 3, 2, q_seg)
  return jnp.asarray(q_seg, jnp.int32), jnp.asarray(kv_seg, jnp.int32)


def _problem(name: str):
  """(inputs (q, k, v, do, dlse), keyword arguments) of a case."""
  case = CASES[name]
  s = case.t if case.s is None else case.s
  # Fresh normal inputs drawn with NumPy: jax.random would compile a sampler for every new shape.
  rng = np.random.default_rng(case.seed)
  hv = case.h if case.hv is None else case.hv
  shapes = ((case.b, case.t, case.n, case.h), (case.b, s, case.k, case.h), (case.b, s, case.k, hv),
            (case.b, case.t, case.n, hv))
  q, k, v, do = (jnp.asarray(rng.standard_normal(shape, np.float32).astype(jnp.dtype(case.dtype)))
                 for shape in shapes)
  dlse = jnp.asarray(rng.standard_normal((case.b, case.n, case.t), np.float32))
  if case.zero_cotangent:
    do, dlse = jnp.zeros_like(do), jnp.zeros_like(dlse)
  seg, kv_seg = _segments(case, s)
  q_offset = jnp.asarray(case.q_offset, jnp.int32) if isinstance(case.q_offset, tuple) else case.q_offset
  kw = dict(mask=case.mask, segment_ids=seg, kv_segment_ids=kv_seg, q_offset=q_offset)
  return (q, k, v, do, dlse), kw


@functools.lru_cache(maxsize=None)
def _reference(name: str):
  (q, k, v, do, dlse), kw = _problem(name)
  f32 = lambda x: x.astype(jnp.float32)  # the reference in float32 also for 16-bit cases
  out, lse, grads = out_lse_grads(lambda q, k, v: reference_with_lse(q, k, v, **kw), f32(q), f32(k), f32(v),
                                  f32(do), dlse)
  return np.asarray(out), np.asarray(lse), tuple(np.asarray(g) for g in grads)


def _flash(impl: str, block_sizes, kw):
  """impl's differentiable (out, lse) function (Pallas kernels interpreted)."""
  entry = REGISTRY[impl]
  return lambda q, k, v: entry.flash.attention_with_lse(q, k, v, block_sizes=block_sizes, **kw,
                                                         **entry.kernel_options(True))


def test_every_registry_row_is_in_the_matrix():
  """Every impl of the registry runs here or is listed, with its reason, in NOT_IN_MATRIX."""
  assert not set(TILES) & set(NOT_IN_MATRIX)
  assert set(TILES) | set(NOT_IN_MATRIX) == set(REGISTRY), sorted(set(REGISTRY) - set(TILES) - set(NOT_IN_MATRIX))


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_reference(impl, name):
  case = CASES[name]
  (q, k, v, do, dlse), kw = _problem(name)
  out, lse, grads = out_lse_grads(_flash(impl, None if case.default_tiles else TILES[impl], kw), q, k, v, do,
                                  dlse)
  ref_out, ref_lse, ref_grads = _reference(name)
  tol = tolerance(q.dtype)
  assert out.shape == ref_out.shape and out.dtype == q.dtype and lse.shape == (case.b, case.n, case.t)
  empty = np.isinf(ref_lse)  # [B, N, T] rows that see no key: lse +inf, out exactly 0
  np.testing.assert_array_equal(np.isinf(lse), empty)
  assert np.all(np.asarray(out, np.float32).transpose(0, 2, 1, 3)[empty] == 0)
  assert rel_err(out, ref_out) < tol, ("out", rel_err(out, ref_out))
  assert rel_err(np.asarray(lse)[~empty], ref_lse[~empty]) < tol, "lse"
  assert np.all(np.asarray(grads[0]).transpose(0, 2, 1, 3)[empty] == 0), "dq of a row that sees nothing"
  for g_name, g, ref_g, x in zip(("dq", "dk", "dv"), grads, ref_grads, (q, k, v)):
    assert g.shape == x.shape and g.dtype == x.dtype, g_name
    assert np.all(np.isfinite(np.asarray(g, np.float32))), g_name
    assert rel_err(g, ref_g) < tol, (g_name, rel_err(g, ref_g))
    if case.zero_cotangent:
      assert np.all(np.asarray(g) == 0), g_name


@pytest.mark.parametrize("impl", IMPLS + ["reference"])
def test_attend_resolves_interpret_from_the_backend(impl):
  """attend(impl=...) with interpret=None runs every kernel on the CPU (Pallas interpreted)."""
  q, k, v, _ = random_qkv(3, 1, 128, 128, 2, 1, 64)
  out = attend(q, k, v, mask=Mask(causal=True), impl=impl)
  want, _ = reference_with_lse(q, k, v, mask=Mask(causal=True))
  assert rel_err(out, want) < 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_packed_documents_do_not_see_each_other(impl):
  """Changing document 0 leaves document 1's outputs bit-identical."""
  q, k, v, _ = random_qkv(7, 1, 256, 256, 2, 2, 16)
  seg = (jnp.arange(256) >= 100).astype(jnp.int32)[None]
  f = jax.jit(lambda q, k, v: _flash(impl, TILES[impl], dict(mask=Mask(causal=True), segment_ids=seg))(q, k, v)[0])
  out = f(q, k, v)
  noise = jax.random.normal(jax.random.PRNGKey(9), (1, 100, 2, 16))
  out2 = f(q.at[:, :100].add(noise), k.at[:, :100].add(noise), v.at[:, :100].add(noise))
  np.testing.assert_array_equal(np.asarray(out[:, 100:]), np.asarray(out2[:, 100:]))
  assert not np.allclose(out[:, :100], out2[:, :100])


POISON_CASES = {
    # 64 queries at positions 512..575 with a 64-key causal window see keys 448..575 only: the kv tiles
    # holding keys [0, 256) and [768, 1024) are never visited, for any tile size up to 256.
    "window_offset": (dict(mask=Mask(causal=True, window=(64, 0)), q_offset=512), (0, 256), (768, 1024)),
    # Queries all of document 1; keys [0, 256) are document 0: those kv tiles' segment ranges cannot
    # overlap any q tile's, so the run-time segment skip never reads them.
    "segments": (dict(mask=Mask(), segment_ids=jnp.ones((1, 64), jnp.int32),
                      kv_segment_ids=(jnp.arange(1024) >= 256).astype(jnp.int32)[None]), (0, 256), None),
}


@pytest.mark.parametrize("name", list(POISON_CASES))
@pytest.mark.parametrize("impl", IMPLS)
def test_skipped_tiles_are_never_read(impl, name):
  """NaN in K/V rows outside every visited tile changes nothing: those tiles are never loaded."""
  kw, *poisoned = POISON_CASES[name]
  q, k, v, do = random_qkv(11, 1, 64, 1024, 2, 1, 16)
  dlse = jax.random.normal(jax.random.PRNGKey(12), (1, 2, 64), jnp.float32)
  rows = np.zeros(1024, bool)
  for span in filter(None, poisoned):
    rows[slice(*span)] = True
  nan = lambda x: jnp.where(jnp.asarray(rows)[None, :, None, None], jnp.nan, x)
  fn = _flash(impl, TILES[impl], kw)
  clean = out_lse_grads(fn, q, k, v, do, dlse)
  dirty = out_lse_grads(fn, q, nan(k), nan(v), do, dlse)
  clean_leaves, dirty_leaves = jax.tree.leaves(clean), jax.tree.leaves(dirty)
  for c, d in zip(clean_leaves, dirty_leaves):
    c, d = np.asarray(c), np.asarray(d)
    assert not np.isnan(d).any()
    np.testing.assert_array_equal(c, d)
