"""Ring (context-parallel) attention: one sequence sharded over a mesh axis, K/V passed round a ring.

Ring Attention with Blockwise Transformers (Liu, Zaharia & Abbeel, arXiv 2310.01889): each device keeps
its shard of the queries and hands its K/V shard to the next device of the ring; after n steps every query
has met every key, and the partial results are merged by their log-sum-exp exactly as FlashAttention's
online softmax merges tiles. Memory per device is O(L/n). The backward pass is a second ring: K/V travel
again together with their dK/dV accumulators, and each device adds its own queries' share
(flash_backward on the *global* out and lse returns exactly that share).

Causal load balancing ("zigzag"; Llama 3, arXiv 2407.21783 sec. 3.3.2; MaxText, tokamax): with a causal
mask a contiguous split leaves device 0 nearly idle while device n-1 sees every key, so the sequence is cut
into 2n chunks and device d holds chunks d and 2n-1-d; every device then does the same work per step.

Which (query chunk, key chunk) pairs can see each other comes from attention.mask.block_map at chunk
granularity, the rule that also skips tiles inside the kernels. Ring steps where no device has a visible
pair are never run (a sliding window shorter than a shard only talks to its neighbours), and a device
skips (lax.cond) a pair with nothing visible, also when the chunks' segment-id ranges cannot overlap.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec as P

from attention.api import attend
from attention.checks import validate
from attention.kernel_utils import default_scale
from attention.mask import BlockSizes, Mask, block_map, segment_block_overlap
from attention.registry import Impl, flash_registry, resolve_impl

# ----------------------------------------------------------------------------------------------------------
# Layout: which chunks a device holds.


def load_balance_order(seq_len: int, num_shards: int) -> np.ndarray:
  """[L] int: the natural index of the token at each position of the load-balanced layout.

  The sequence is cut into 2n chunks; shard d of the balanced layout is chunk d followed by chunk 2n-1-d.
  """
  _check_divisible(seq_len, 2 * num_shards, load_balance=True)
  chunk = seq_len // (2 * num_shards)
  chunks = np.arange(2 * num_shards).reshape(2, num_shards)
  order = np.stack([chunks[0], chunks[1][::-1]], axis=1).reshape(-1)  # [d, 2n-1-d] for each d
  return (order[:, None] * chunk + np.arange(chunk)[None]).reshape(-1)


def to_load_balanced(x, num_shards: int, *, axis: int = 1):
  """Reorder a natural-order sequence (tokens, positions, segment ids) into the load-balanced layout.

  Use it once on the data, then call ring_attention_shard(..., balanced_input=True) and give the model the
  reordered positions: everything but attention is position-wise, so nothing else changes.
  """
  return jnp.take(x, load_balance_order(x.shape[axis], num_shards), axis=axis)


def from_load_balanced(x, num_shards: int, *, axis: int = 1):
  """Inverse of to_load_balanced."""
  return jnp.take(x, np.argsort(load_balance_order(x.shape[axis], num_shards)), axis=axis)


def _check_divisible(seq_len, parts, load_balance):
  if seq_len % parts:
    why = "2 * context shards (load_balance=True)" if load_balance else "the number of context shards"
    raise ValueError(f"sequence length L={seq_len} must be divisible by {why} = {parts}")


def _shift(x, axis_name, n, shift):
  """Device i sends x to device i + shift (mod n)."""
  shift %= n
  if shift == 0:
    return x
  return lax.ppermute(x, axis_name, [(i, (i + shift) % n) for i in range(n)])


def _zigzag_perms(n):
  """ppermute pairs moving the first / second half of natural shard d (chunks 2d, 2d+1) to their owners."""
  owner = lambda c: c if c < n else 2 * n - 1 - c
  return [(d, owner(2 * d)) for d in range(n)], [(d, owner(2 * d + 1)) for d in range(n)]


def _shards_to_balanced(x, axis_name, n):
  """Inside shard_map: local natural shard [B, 2c, ...] -> local balanced shard (chunks d, 2n-1-d)."""
  c = x.shape[1] // 2
  even_perm, odd_perm = _zigzag_perms(n)
  even = lax.ppermute(x[:, :c], axis_name, even_perm)  # an even chunk lands in slot 0 of an even device
  odd = lax.ppermute(x[:, c:], axis_name, odd_perm)
  first = lax.axis_index(axis_name) % 2 == 0
  return jnp.concatenate([jnp.where(first, even, odd), jnp.where(first, odd, even)], axis=1)


def _shards_from_balanced(x, axis_name, n):
  """Inverse of _shards_to_balanced."""
  c = x.shape[1] // 2
  first = lax.axis_index(axis_name) % 2 == 0
  even, odd = jnp.where(first, x[:, :c], x[:, c:]), jnp.where(first, x[:, c:], x[:, :c])
  invert = lambda perm: [(dst, src) for src, dst in perm]
  even_perm, odd_perm = _zigzag_perms(n)
  return jnp.concatenate([lax.ppermute(even, axis_name, invert(even_perm)),
                          lax.ppermute(odd, axis_name, invert(odd_perm))], axis=1)


# ----------------------------------------------------------------------------------------------------------
# The static plan of one ring.


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Who holds which chunk, which chunk pairs are visible, and which ring steps run (all static)."""

  num_shards: int
  chunk: int  # tokens per chunk
  owned: tuple[tuple[int, ...], ...]  # [n][slots]: global chunk index in slot a of device d
  visible: tuple[tuple[bool, ...], ...]  # [chunks][chunks]: some query of chunk i may see some key of j
  first_shift: int  # ring step t shows device d the K/V of device d - (first_shift + t)
  num_steps: int


def _cyclic_cover(shifts, n):
  """Smallest cyclic interval (start, length) of Z_n holding every shift in `shifts`."""
  a = sorted(shifts)
  if len(a) == n:
    return 0, n
  gaps = [((a[(i + 1) % len(a)] - a[i]) % n) or n for i in range(len(a))]
  widest = int(np.argmax(gaps))
  return a[(widest + 1) % len(a)], n - gaps[widest] + 1


def _make_plan(mask: Mask, seq_len: int, n: int, load_balance: bool) -> _Plan:
  slots = 2 if load_balance else 1
  chunk = seq_len // (n * slots)
  owned = tuple((d, 2 * n - 1 - d) if load_balance else (d,) for d in range(n))
  visible = block_map(mask, seq_len, seq_len, BlockSizes(chunk, chunk)).dense() > 0
  needed = [s for s in range(n)
            if any(visible[qc, kc] for d in range(n) for qc in owned[d] for kc in owned[(d - s) % n])]
  first, steps = _cyclic_cover(needed, n)  # never empty: a query always sees its own position
  return _Plan(n, chunk, owned, tuple(map(tuple, visible.tolist())), first, steps)


@dataclasses.dataclass(frozen=True)
class _Problem:
  """Static facts of one ring call: the ring axis, its plan, mask, scale and the local kernel's row."""

  axis_name: str
  plan: _Plan
  mask: Mask
  scale: float
  kernel: Impl  # a row of attention.registry.REGISTRY with a flash kernel
  interpret: bool
  block_sizes: BlockSizes | None

  def kernel_kwargs(self):
    return dict(mask=self.mask, scale=self.scale, block_sizes=self.block_sizes,
                **self.kernel.kernel_options(self.interpret))

  @property
  def kernels(self):
    return self.kernel.flash


# ----------------------------------------------------------------------------------------------------------
# The ring itself (runs inside shard_map, on local shards).


def _split(x, slots, axis=1):
  return [None] * slots if x is None else jnp.split(x, slots, axis=axis)


def _pairs(pb: _Problem, shift, q_segs, kv_segs):
  """Yield (a, b, visible, q_offset) for every (query slot a, key slot b) at this ring step."""
  plan = pb.plan
  idx = lax.axis_index(pb.axis_name)
  src = jnp.mod(idx - shift, plan.num_shards)  # the device whose K/V this one holds now
  owned, visible = jnp.asarray(plan.owned, jnp.int32), jnp.asarray(plan.visible)
  slots = len(plan.owned[0])
  for a in range(slots):
    for b in range(slots):
      qc, kc = owned[idx, a], owned[src, b]
      vis = visible[qc, kc]
      if q_segs[a] is not None:
        vis &= segment_block_overlap(q_segs[a], kv_segs[b])
      # Keys of chunk kc sit at 0..c-1 for the kernel, so queries of chunk qc sit at (qc - kc) * c.
      yield a, b, vis, (qc - kc) * plan.chunk


def _merge(acc, out, lse):
  """Combine two softmax-normalised partial results by their log-sum-exp (-inf: nothing seen)."""
  acc_out, acc_lse = acc  # [B, c, N, Hv] f32, [B, N, c] f32
  new = jnp.logaddexp(acc_lse, lse)
  safe = jnp.where(jnp.isneginf(new), 0.0, new)
  w_acc = jnp.exp(acc_lse - safe).transpose(0, 2, 1)[..., None]  # [B, c, N, 1]
  w_new = jnp.exp(lse - safe).transpose(0, 2, 1)[..., None]
  return acc_out * w_acc + out.astype(jnp.float32) * w_new, new


def _forward_step(pb, shift, qs, q_segs, kv, acc):
  k, v, kv_seg = kv
  slots = len(qs)
  ks, vs, kv_segs = _split(k, slots), _split(v, slots), _split(kv_seg, slots)
  acc = list(acc)
  for a, b, vis, q_offset in _pairs(pb, shift, q_segs, kv_segs):

    def attend_pair(acc_a, a=a, b=b, q_offset=q_offset):
      out, lse = pb.kernels.forward(qs[a], ks[b], vs[b], segment_ids=q_segs[a], kv_segment_ids=kv_segs[b],
                                           q_offset=q_offset, **pb.kernel_kwargs())
      return _merge(acc_a, out, jnp.where(jnp.isposinf(lse), -jnp.inf, lse))

    acc[a] = lax.cond(vis, attend_pair, lambda acc_a: acc_a, acc[a])
  return acc


# Unroll the ring's loop on XLA:CPU. Its runtime runs independent thunks concurrently and does not order
# collectives inside a while loop against those outside it, so with the loop, devices of one ring could
# enter a ppermute while others wait in an unrelated all-gather: a deadlock seen in the 8-fake-device tests
# (5 devices in collective-permute, 3 in all-gather). GPU and TPU run collectives in program order and keep
# the loop, whose memory depends on L/n only; compile-only memory measurements on the CPU set this to False
# to measure that program (an unrolled ring keeps more steps' buffers alive).
UNROLL_ON_CPU = True


def _unroll_ring() -> bool:
  return UNROLL_ON_CPU and jax.default_backend() == "cpu"


def _ring_forward(pb: _Problem, q, k, v, seg):
  plan = pb.plan
  n, slots = plan.num_shards, len(plan.owned[0])
  qs, q_segs = _split(q, slots), _split(seg, slots)
  b, c, heads, hv = qs[0].shape[:3] + (v.shape[-1],)
  acc = [(jnp.zeros((b, c, heads, hv), jnp.float32), jnp.full((b, heads, c), -jnp.inf, jnp.float32))] * slots
  kv = _shift((k, v, seg), pb.axis_name, n, plan.first_shift)

  # One traced step (compile time); the last step's transfer is unused, one of n.
  def step(t, carry):
    kv, acc = carry
    nxt = _shift(kv, pb.axis_name, n, 1)  # issued before the compute so the transfer can overlap it
    return nxt, _forward_step(pb, plan.first_shift + t, qs, q_segs, kv, acc)

  _, acc = lax.fori_loop(0, plan.num_steps, step, (kv, acc), unroll=_unroll_ring())
  out = jnp.concatenate([o for o, _ in acc], axis=1).astype(q.dtype)  # [B, T/n, N, Hv]
  lse = jnp.concatenate([l for _, l in acc], axis=2)  # [B, N, T/n]
  return out, jnp.where(jnp.isneginf(lse), jnp.inf, lse)  # +inf: exp(s - lse) = 0 in the backward


def _backward_step(pb, shift, qs, q_segs, outs, lses, dos, kv, dkv, dqs):
  k, v, kv_seg = kv
  slots = len(qs)
  ks, vs, kv_segs = _split(k, slots), _split(v, slots), _split(kv_seg, slots)
  dks, dvs = _split(dkv[0], slots), _split(dkv[1], slots)
  dqs = list(dqs)
  for a, b, vis, q_offset in _pairs(pb, shift, q_segs, kv_segs):

    def grad_pair(grads, a=a, b=b, q_offset=q_offset):
      dq, dk, dv = pb.kernels.backward(qs[a], ks[b], vs[b], outs[a], lses[a], dos[a],
                                              segment_ids=q_segs[a], kv_segment_ids=kv_segs[b],
                                              q_offset=q_offset, **pb.kernel_kwargs())
      return tuple(g + d.astype(jnp.float32) for g, d in zip(grads, (dq, dk, dv)))

    dqs[a], dks[b], dvs[b] = lax.cond(vis, grad_pair, lambda g: g, (dqs[a], dks[b], dvs[b]))
  return (jnp.concatenate(dks, axis=1), jnp.concatenate(dvs, axis=1)), dqs


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(pb, q, k, v, seg):
  return _ring_forward(pb, q, k, v, seg)[0]


def _ring_fwd(pb, q, k, v, seg):
  out, lse = _ring_forward(pb, q, k, v, seg)
  return out, (q, k, v, seg, out, lse)


def _ring_bwd(pb, res, do):
  q, k, v, seg, out, lse = res
  plan = pb.plan
  n, slots = plan.num_shards, len(plan.owned[0])
  qs, q_segs, outs, dos = _split(q, slots), _split(seg, slots), _split(out, slots), _split(do, slots)
  lses = _split(lse, slots, axis=2)
  dqs = [jnp.zeros(x.shape, jnp.float32) for x in qs]
  kv = _shift((k, v, seg), pb.axis_name, n, plan.first_shift)
  dkv = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))

  def step(t, carry):
    kv, dkv, dqs = carry
    nxt = _shift(kv, pb.axis_name, n, 1)
    dkv, dqs = _backward_step(pb, plan.first_shift + t, qs, q_segs, outs, lses, dos, kv, dkv, dqs)
    return nxt, _shift(dkv, pb.axis_name, n, 1), dqs  # dK/dV travel with their K/V

  _, dkv, dqs = lax.fori_loop(0, plan.num_steps, step, (kv, dkv, dqs), unroll=_unroll_ring())
  # dK/dV now sit first_shift + num_steps devices downstream of their owner (0 for a full ring): send home.
  dk, dv = _shift(dkv, pb.axis_name, n, -(plan.first_shift + plan.num_steps))
  return jnp.concatenate(dqs, axis=1).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_ring.defvjp(_ring_fwd, _ring_bwd)


# ----------------------------------------------------------------------------------------------------------
# Public API.


def ring_attention_shard(q, k, v, *, axis_name: str = "context", mask: Mask = Mask(), segment_ids=None,
                         scale=None, impl: str = "auto", interpret: bool | None = None, load_balance: bool = True,
                         balanced_input: bool = False, block_sizes: BlockSizes | None = None):
  """Ring attention on local shards; call it inside jax.shard_map (with check_vma=False) over `axis_name`.

  Args:
    q: [B, L/n, N, H] this device's queries; k [B, L/n, K, H], v [B, L/n, K, Hv] its keys and values.
    axis_name: the mesh axis the sequence is sharded over (n devices).
    mask: causal and/or sliding window, in global positions.
    segment_ids: [B, L/n] int, this device's share; packed documents never see each other.
    scale: logit scale, default 1/sqrt(H).
    impl: local kernel: "xla" | "pallas" | "pallas_gpu" | "pallas_tpu" | "pallas_mgpu" | "auto" (as in attend:
      the backend's first FlashAttention row whose auto_for lists it).
    interpret: Pallas interpret mode; None means "exactly when the default backend is the CPU".
    load_balance: hold chunks d and 2n-1-d instead of one contiguous shard (balances causal work).
    balanced_input: the shards already are in the load-balanced layout (to_load_balanced on the data);
      otherwise they are contiguous natural-order shards and are exchanged (two ppermutes) on the way in
      and out.
    block_sizes: tile sizes of the local kernel.
  Returns:
    [B, L/n, N, Hv] in q's dtype, in the same layout as the inputs.
  """
  try:
    n = lax.axis_size(axis_name)
  except NameError as e:
    raise ValueError(f"axis_name={axis_name!r} is not a mesh axis bound by the enclosing shard_map") from e
  validate(q, k, v, mask=mask, segment_ids=segment_ids, kv_segment_ids=None, q_offset=0)
  if k.shape[1] != q.shape[1]:
    raise ValueError(f"ring attention is self-attention: q and k shards must have equal lengths, got "
                     f"q {q.shape}, k {k.shape}")
  seq_len = n * q.shape[1]
  _check_divisible(seq_len, 2 * n if load_balance else n, load_balance)
  if balanced_input and not load_balance:
    raise ValueError("balanced_input=True needs load_balance=True")
  kernels = flash_registry()
  name, interpret = resolve_impl(impl, interpret, registry=kernels, op="ring_attention")
  scale = default_scale(q.shape[-1], scale)
  pb = _Problem(axis_name, _make_plan(mask, seq_len, n, load_balance), mask, scale, kernels[name], interpret,
                block_sizes)
  seg = None if segment_ids is None else jnp.asarray(segment_ids, jnp.int32)
  reorder = load_balance and not balanced_input
  if reorder:
    q, k, v = (_shards_to_balanced(x, axis_name, n) for x in (q, k, v))
    seg = None if seg is None else _shards_to_balanced(seg, axis_name, n)
  out = _ring(pb, q, k, v, seg)
  return _shards_from_balanced(out, axis_name, n) if reorder else out


def ring_attention(q, k, v, *, mesh, axis_name: str = "context", mask: Mask = Mask(), segment_ids=None,
                   scale=None, impl: str = "auto", load_balance: bool = True, block_sizes: BlockSizes | None = None,
                   interpret: bool | None = None):
  """Exact self-attention of global arrays whose sequence axis is sharded over `axis_name` of `mesh`.

  Equal to attention.attend(q, k, v, mask=mask, segment_ids=segment_ids) up to float rounding, with
  O(L/n) memory per device. Works inside jax.jit. Only `axis_name` is manual inside the ring (shard_map
  with axis_names={axis_name}); other mesh axes (data, fsdp, tensor) keep sharding B and the heads as the
  compiler laid them out.

  Args:
    q: [B, L, N, H], k [B, L, K, H], v [B, L, K, Hv], natural token order.
    mesh: a jax.sharding.Mesh (or the AbstractMesh of jax.sharding.get_abstract_mesh()); `axis_name`
      (n devices) shards L.
    mask, segment_ids, scale, impl, interpret, block_sizes: as in ring_attention_shard.
    load_balance: zigzag layout so causal work is equal on every device; needs L % 2n == 0 (else L % n).
  Returns:
    [B, L, N, Hv] in q's dtype, L sharded over `axis_name`.
  """
  if not isinstance(mesh, (Mesh, AbstractMesh)):
    raise ValueError(f"mesh must be a jax.sharding.Mesh, got {mesh!r}")
  if axis_name not in mesh.axis_names:
    raise ValueError(f"axis_name={axis_name!r} is not an axis of the mesh {mesh.axis_names}")
  validate(q, k, v, mask=mask, segment_ids=segment_ids, kv_segment_ids=None, q_offset=0)
  if k.shape[1] != q.shape[1]:
    raise ValueError(f"ring attention is self-attention: q and k must have equal lengths, got q {q.shape}, "
                     f"k {k.shape}")
  n = mesh.shape[axis_name]
  _check_divisible(q.shape[1], 2 * n if load_balance else n, load_balance)
  fn = functools.partial(ring_attention_shard, axis_name=axis_name, mask=mask, scale=scale, impl=impl,
                         interpret=interpret, load_balance=load_balance, block_sizes=block_sizes)
  args = (q, k, v) + (() if segment_ids is None else (segment_ids,))
  call = (lambda q, k, v: fn(q, k, v)) if segment_ids is None else (lambda q, k, v, s: fn(q, k, v, segment_ids=s))
  if AxisType.Explicit not in mesh.axis_types:
    # Only the context axis is manual; the compiler keeps B and the heads sharded as they were.
    spec = P(None, axis_name)
    return jax.shard_map(call, mesh=mesh, in_specs=spec, out_specs=spec, axis_names={axis_name},
                         check_vma=False)(*args)
  # Explicit axes: every axis manual, each input keeps its own B / head sharding and L goes over the ring.
  specs = []
  for x in args:
    spec = tuple(jax.typeof(x).sharding.spec) + (None,) * x.ndim
    specs.append(P(spec[0], axis_name, *spec[2:x.ndim]))
  if specs[0][2] != specs[1][2] or specs[1] != specs[2]:
    raise ValueError(f"q, k, v must shard B and the heads alike, got {specs[:3]}")
  args = [jax.reshard(x, NamedSharding(mesh, s)) for x, s in zip(args, specs)]
  return jax.shard_map(call, mesh=mesh, in_specs=tuple(specs), out_specs=specs[0], check_vma=False)(*args)


def context_parallel_attend(q, k, v, *, mask: Mask = Mask(), segment_ids=None, impl: str = "auto",
                            axis_name: str = "context", load_balance: bool = True,
                            block_sizes: BlockSizes | None = None):
  """The hook a model calls for full-sequence self-attention: ring attention under a context-parallel mesh.

  When the current mesh (jax.set_mesh) has an `axis_name` axis of size > 1 this is ring_attention over it,
  else attention.attend. Same result either way; the model needs no knowledge of the mesh.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or axis_name not in mesh.axis_names or mesh.shape[axis_name] == 1:
    return attend(q, k, v, mask=mask, segment_ids=segment_ids, impl=impl, block_sizes=block_sizes)
  return ring_attention(q, k, v, mesh=mesh, axis_name=axis_name, mask=mask, segment_ids=segment_ids, impl=impl,
                        load_balance=load_balance, block_sizes=block_sizes)


__all__ = ["ring_attention", "ring_attention_shard", "context_parallel_attend", "load_balance_order",
           "to_load_balanced", "from_load_balanced"]
