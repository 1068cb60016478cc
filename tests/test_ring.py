"""Ring (context-parallel) attention on fake CPU devices against single-device dense attention."""

import functools
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from attention import BlockSizes, Mask, attend, ring
from attention.ring import (context_parallel_attend, from_load_balanced, load_balance_order, ring_attention,
                            ring_attention_shard, to_load_balanced)
from attention.testing import TOL, fwd_and_grads, random_qkv, rel_err

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mesh(shape, names, axis_type=AxisType.Auto):
  devices = jax.devices()[:int(np.prod(shape))]
  return jax.make_mesh(shape, names, axis_types=(axis_type,) * len(names), devices=devices)


def _packed_segments(seed, b, length, docs):
  """[B, L] int32 ids of `docs` documents per row with random boundaries (they straddle shard edges)."""
  rng = np.random.default_rng(seed)
  rows = [np.searchsorted(np.sort(rng.choice(np.arange(1, length), docs - 1, replace=False)),
                          np.arange(length), side="right") for _ in range(b)]
  return jnp.asarray(np.stack(rows), jnp.int32)


def _assert_ring_matches(mesh, q, k, v, ct, *, mask, segment_ids=None, tol=None, **ring_kw):
  @jax.jit
  def run(q, k, v, ct):
    out, vjp = jax.vjp(lambda q, k, v: ring_attention(q, k, v, mesh=mesh, mask=mask, segment_ids=segment_ids,
                                                      **ring_kw), q, k, v)
    return out, vjp(ct)

  tol = TOL[q.dtype.type] if tol is None else tol
  out, grads = run(q, k, v, ct)
  ref_out, ref_grads = fwd_and_grads("reference", q, k, v, ct, mask=mask, segment_ids=segment_ids)
  assert out.shape == ref_out.shape and out.dtype == q.dtype
  assert rel_err(out, ref_out) < tol, ("out", rel_err(out, ref_out))
  for name, g, rg in zip("qkv", grads, ref_grads):
    assert g.dtype == rg.dtype and rel_err(g, rg) < tol, (f"d{name}", rel_err(g, rg))


CASES = {
    "causal": dict(mask=Mask(causal=True)),
    "bidirectional": dict(mask=Mask(), hv=8),
    "window_shorter_than_shard": dict(mask=Mask(window=(5, 3))),
    "causal_window_over_shards": dict(mask=Mask(causal=True, window=(20, 0))),
    # On a (data=2, context=4) mesh with the batch split over data: the ring along context keeps B sharded.
    "packed_causal_data_axis": dict(mask=Mask(causal=True), docs=5, data=2),
}


@pytest.mark.parametrize("load_balance", [True, False], ids=["zigzag", "contiguous"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_single_device(case, load_balance):
  """4 context shards of L=64 (chunks of 8 or 16 tokens), GQA 4:2; forward and gradients."""
  spec = dict(CASES[case])
  mask, hv, docs, data = spec["mask"], spec.get("hv"), spec.get("docs"), spec.get("data", 1)
  q, k, v, ct = random_qkv(list(CASES).index(case), 2, 64, 64, 4, 2, 16, hv=hv)
  seg = None if docs is None else _packed_segments(1, 2, 64, docs)
  if data == 1:
    mesh = _mesh((4,), ("context",))
  else:
    mesh = _mesh((data, 4), ("data", "context"))
    by_data = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
    q, k, v, ct, seg = map(by_data, (q, k, v, ct, seg))
  _assert_ring_matches(mesh, q, k, v, ct, mask=mask, segment_ids=seg, load_balance=load_balance,
                       block_sizes=BlockSizes(8, 8))


def test_eight_shards():
  """A plain 8-way ring with the default tiles; packed causal (the data axis: packed_causal_data_axis)."""
  q, k, v, ct = random_qkv(3, 2, 128, 128, 2, 1, 8)
  seg = _packed_segments(2, 2, 128, 6)
  _assert_ring_matches(_mesh((8,), ("context",)), q, k, v, ct, mask=Mask(causal=True), segment_ids=seg)


def test_bfloat16():
  q, k, v, ct = random_qkv(4, 1, 64, 64, 2, 2, 16, dtype=jnp.bfloat16)
  _assert_ring_matches(_mesh((4,), ("context",)), q, k, v, ct, mask=Mask(causal=True))


def test_pallas_gpu_kernel_interpreted():
  """The local attention can be the Pallas GPU kernel (interpret mode on the CPU)."""
  q, k, v, ct = random_qkv(5, 1, 64, 64, 2, 1, 16)
  _assert_ring_matches(_mesh((2,), ("context",)), q, k, v, ct, mask=Mask(causal=True), impl="pallas_gpu",
                       interpret=True, block_sizes=BlockSizes(16, 16))


def test_explicit_mesh_axes():
  """Explicit axes: L is resharded over context, B keeps its data sharding (forward only)."""
  q, k, v, _ = random_qkv(6, 2, 32, 32, 2, 2, 8)
  mesh = _mesh((2, 4), ("data", "context"), AxisType.Explicit)
  q, k, v = (jax.device_put(x, NamedSharding(mesh, P("data"))) for x in (q, k, v))
  out = jax.jit(functools.partial(ring_attention, mesh=mesh, mask=Mask(causal=True)))(q, k, v)
  assert out.sharding.spec[:2] == ("data", "context")
  assert rel_err(out, attend(q, k, v, mask=Mask(causal=True), impl="reference")) < 1e-5


def test_context_parallel_hook():
  """context_parallel_attend: attend() without a mesh, the ring under jax.set_mesh with context > 1."""
  q, k, v, _ = random_qkv(9, 1, 32, 32, 2, 2, 8)
  mask = Mask(causal=True, window=(6, 0))
  hook = jax.jit(functools.partial(context_parallel_attend, mask=mask, impl="xla"))
  ref = attend(q, k, v, mask=mask, impl="reference")
  assert rel_err(hook(q, k, v), ref) < 1e-5
  assert "collective_permute" not in hook.lower(q, k, v).as_text()
  mesh = _mesh((2, 4), ("data", "context"))
  with jax.set_mesh(mesh):
    assert "collective_permute" in hook.lower(q, k, v).as_text()  # retraced: the mesh is in the context
    assert rel_err(hook(q, k, v), ref) < 1e-5


def test_shard_level_api_on_balanced_data():
  """A model that reorders its tokens once (to_load_balanced) calls ring_attention_shard inside shard_map."""
  mesh, mask = _mesh((4,), ("context",)), Mask(causal=True, window=(12, 0))
  q, k, v, _ = random_qkv(7, 1, 64, 64, 2, 2, 8)
  seg = _packed_segments(3, 1, 64, 3)
  spec = P(None, "context")
  fn = jax.shard_map(lambda q, k, v, s: ring_attention_shard(q, k, v, mask=mask, segment_ids=s, balanced_input=True),
                     mesh=mesh, in_specs=(spec, spec, spec, spec), out_specs=spec, check_vma=False)
  lb = functools.partial(to_load_balanced, num_shards=4)
  out = from_load_balanced(jax.jit(fn)(lb(q), lb(k), lb(v), lb(seg)), 4)
  assert rel_err(out, attend(q, k, v, mask=mask, segment_ids=seg, impl="reference")) < 1e-5


def test_load_balance_layout():
  # L=8 over 2 shards: chunks of 2; shard 0 holds chunks 0 and 3, shard 1 holds chunks 1 and 2.
  np.testing.assert_array_equal(load_balance_order(8, 2), [0, 1, 6, 7, 2, 3, 4, 5])
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 48, 3))
  np.testing.assert_array_equal(from_load_balanced(to_load_balanced(x, 4), 4), x)
  # The in-shard_map exchange (ppermute) produces exactly the global reordering, and undoes it.
  mesh, spec = _mesh((4,), ("context",)), P(None, "context")
  there = jax.shard_map(lambda x: ring._shards_to_balanced(x, "context", 4), mesh=mesh, in_specs=spec,
                        out_specs=spec)
  back = jax.shard_map(lambda x: ring._shards_from_balanced(x, "context", 4), mesh=mesh, in_specs=spec,
                       out_specs=spec)
  np.testing.assert_array_equal(there(x), to_load_balanced(x, 4))
  np.testing.assert_array_equal(back(there(x)), x)


@pytest.mark.parametrize("mask,load_balance,first,steps", [
    (Mask(causal=True), True, 0, 8),  # every device meets every other one
    (Mask(), False, 0, 8),
    (Mask(causal=True, window=(100, 0)), False, 0, 2),  # window < shard (128): itself and the previous one
    (Mask(window=(100, 100)), False, 7, 3),  # previous, itself, next
    (Mask(window=(50, 50)), True, 7, 3),  # chunks of 64: a chunk's neighbours sit on devices d-1, d+1
    (Mask(window=(100, 100)), True, 6, 5),  # window > chunk: chunks d-2 .. d+2
    (Mask(causal=True, window=(300, 0)), False, 0, 4),  # window of 2.3 shards reaches 3 shards back
])
def test_ring_steps_skipped(mask, load_balance, first, steps):
  """Ring steps that no device needs are not run: a short window only talks to its neighbours."""
  plan = ring._make_plan(mask, 1024, 8, load_balance)
  assert (plan.first_shift, plan.num_steps) == (first, steps)


def test_per_device_memory_scales_as_l_over_n(monkeypatch):
  """Compiled (not run) train-step memory at L=32K: 8 shards need ~1/5 of one device, and the same as 4
  shards of 16K (memory depends on L/n only). Not 1/8: the ring double-buffers K/V and dK/dV. Measured on
  the looped ring that GPUs and TPUs run (ring.UNROLL_ON_CPU)."""
  monkeypatch.setattr(ring, "UNROLL_ON_CPU", False)

  def grad_of(attn):
    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v) ** 2), argnums=(0, 1, 2)))

  def per_device_bytes(length, mesh=None):
    x = jax.ShapeDtypeStruct((1, length, 2, 128), jnp.float32, sharding=None if mesh is None else
                             NamedSharding(mesh, P(None, "context")))
    bs, mask = BlockSizes(128, 128), Mask(causal=True)
    if mesh is None:
      f = grad_of(lambda q, k, v: attend(q, k, v, mask=mask, impl="xla", block_sizes=bs))
    else:
      f = grad_of(lambda q, k, v: ring_attention(q, k, v, mesh=mesh, mask=mask, block_sizes=bs))
    m = f.lower(x, x, x).compile().memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes

  single = per_device_bytes(32768)
  ring8 = per_device_bytes(32768, _mesh((8,), ("context",)))
  ring4 = per_device_bytes(16384, _mesh((4,), ("context",)))
  assert ring8 < single / 4.5, (ring8, single)
  assert abs(ring8 - ring4) < 0.05 * ring4, (ring8, ring4)


def test_errors():
  mesh = _mesh((4,), ("context",))
  q, k, v, _ = random_qkv(8, 1, 36, 36, 2, 2, 8)
  with pytest.raises(ValueError, match=r"L=36 must be divisible by 2 \* context shards"):
    ring_attention(q, k, v, mesh=mesh)
  with pytest.raises(ValueError, match="axis_name='seq'"):
    ring_attention(q, k, v, mesh=mesh, axis_name="seq")
  with pytest.raises(ValueError, match="impl='nope'"):
    ring_attention(q, k, v, mesh=mesh, impl="nope", load_balance=False)
  with pytest.raises(ValueError, match="self-attention"):
    ring_attention(q, k[:, :32], v[:, :32], mesh=mesh, load_balance=False)
  with pytest.raises(ValueError, match="rank 4"):
    ring_attention(q[0], k, v, mesh=mesh)
  with pytest.raises(ValueError, match="not a mesh axis bound"):
    ring_attention_shard(q, k, v)


_WORKER = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    from training.sharding import maybe_initialize_distributed
    maybe_initialize_distributed(f"127.0.0.1:{sys.argv[2]}", num_processes=2, process_id=int(sys.argv[1]))
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from attention import Mask, attend
    from attention.ring import ring_attention
    mesh = jax.make_mesh((4,), ("context",), axis_types=(AxisType.Auto,))
    q, k, v = np.random.default_rng(0).standard_normal((3, 1, 32, 2, 8)).astype(np.float32)
    sh = NamedSharding(mesh, P(None, "context"))
    glob = [jax.make_array_from_callback(x.shape, sh, lambda idx, x=x: x[idx]) for x in (q, k, v)]
    loss = lambda attn: (lambda q, k, v: (attn(q, k, v) ** 2).sum())
    g = jax.jit(jax.grad(loss(lambda q, k, v: ring_attention(q, k, v, mesh=mesh, mask=Mask(causal=True)))))(*glob)
    ref = jax.grad(loss(lambda q, k, v: attend(q, k, v, mask=Mask(causal=True), impl="reference")))(q, k, v)
    err = max(float(np.abs(np.asarray(s.data) - np.asarray(ref)[s.index]).max()) for s in g.addressable_shards)
    assert jax.device_count() == 4 and jax.local_device_count() == 2 and err < 1e-5, err
    print("OK", err)
""")


def test_two_processes_on_localhost():
  """train.py's multi-host init over 127.0.0.1: 2 processes x 2 CPU devices form one 4-device ring (gloo)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  # conftest's compile flags (-O0 and the rest), with 2 CPU devices per process instead of 8.
  flags = [f for f in os.environ["XLA_FLAGS"].split() if "xla_force_host_platform_device_count" not in f]
  env = dict(os.environ, XLA_FLAGS=" ".join(["--xla_force_host_platform_device_count=2", *flags]),
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(i), str(port)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=240)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0 and "OK" in out, out[-3000:]
