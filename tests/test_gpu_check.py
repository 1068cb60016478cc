"""The CPU-side parts of benchmarks/gpu_check.py: FLOP table, shapes, arguments, config plumbing, timing
arithmetic (profiler parsing, the jitted loop) and the correctness check."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from attention import Mask, pallas_gpu, pallas_mgpu
from attention.testing import reference_with_lse
from benchmarks import gpu_check


def test_flop_table_counts_tiles_of_the_block_map():
  table = gpu_check.flop_table([4096, 32768], gpu_check.BENCH_MASKS)
  b, n = gpu_check.bench_shapes(4096)
  tiles = 32 * 33 // 2  # causal at 128x128 tiles: the lower triangle with its diagonal
  fwd, fwd_bwd = table[(4096, "causal")]
  assert fwd == b * n * tiles * 2 * 128 * 128 * (128 + 128)  # QK^T and PV
  assert fwd_bwd * 2 == fwd * 7  # backward adds 5 matmuls of the same size
  # A 1024-wide window visits about 9 kv tiles per q tile, causal at 32K about 128 on average.
  assert table[(32768, "causal")][0] > 14 * table[(32768, "window(1024,0)")][0]


def test_bench_shapes_fill_the_gpu():
  for length in (4096, 16384, 32768):
    b, n = gpu_check.bench_shapes(length)
    assert b * length >= 16384 and n == 16


def test_parse_args():
  args = gpu_check.parse_args([])
  assert args.lengths == [4096, 16384, 32768] and args.reps == 5 and args.calls == 10 and not args.interpret
  assert args.impls == ["pallas_gpu", "pallas_mgpu"]
  assert gpu_check.parse_args(["--lengths", "1024,2048", "--reps", "3"]).lengths == [1024, 2048]
  for bad in (["--lengths", "4k"], ["--reps", "0"], ["--lengths", ","], ["--calls", "0"], ["--impls", "triton"]):
    with pytest.raises(SystemExit):
      gpu_check.parse_args(bad)


def test_explicit_configs_reach_the_kernel_call():
  """The sweep hands each configuration to its own function; no module table is touched."""
  configs = gpu_check.sweep_configs()
  defaults = dict(pallas_gpu._DEFAULTS), dict(pallas_mgpu.configs._DEFAULTS)
  for impl in ("pallas_gpu", "pallas_mgpu"):
    assert len(set(configs[impl])) == len(configs[impl]) > 1
    fns = [gpu_check.impls_for(Mask(causal=True), {impl: c})[impl] for c in configs[impl]]
    assert [fn.keywords["configs"] for fn in fns] == configs[impl]
  assert (dict(pallas_gpu._DEFAULTS), dict(pallas_mgpu.configs._DEFAULTS)) == defaults
  assert "configs" not in gpu_check.impls_for(Mask())["pallas_gpu"].keywords


def test_pallas_gpu_takes_an_explicit_config():
  """A config passed to pallas_gpu is the one its kernels use: an invalid one is rejected by that call."""
  q = jnp.ones((1, 64, 1, 64), jnp.float32) * jnp.arange(64.0)[None, :, None, None] / 64
  base = pallas_gpu.default_configs(64, jnp.float32)
  bad = dataclasses.replace(base, fwd=pallas_gpu.KernelConfig(48, 64, 4, 2))
  with pytest.raises(ValueError, match="power of two"):
    pallas_gpu.flash_attention(q, q, q, interpret=True, configs=bad)


_PROFILE = """
planes {
  name: "/device:GPU:0"
  lines { name: "Stream #13(compute)" events { metadata_id: 1 offset_ps: 0 duration_ps: 3000000 }
          events { metadata_id: 2 offset_ps: 4000000 duration_ps: 1000000 }
          events { metadata_id: 1 offset_ps: 9000000 duration_ps: 3000000 }
          events { metadata_id: 2 offset_ps: 13000000 duration_ps: 1000000 } }
  lines { name: "XLA Ops" events { metadata_id: 1 offset_ps: 0 duration_ps: 9000000 } }
  event_metadata { key: 1 value { id: 1 name: "flash_fwd" } }
  event_metadata { key: 2 value { id: 2 name: "pad_fusion" } }
}
planes {
  name: "/host:CPU"
  lines { name: "python" events { metadata_id: 1 offset_ps: 0 duration_ps: 99000000 } }
  event_metadata { key: 1 value { id: 1 name: "dispatch" } }
}
"""


def test_kernel_seconds_sums_device_stream_events_per_call():
  profile = jax.profiler.ProfileData.from_text_proto(_PROFILE)
  seconds, kernels = gpu_check.kernel_seconds(profile, calls=2)
  assert seconds == pytest.approx(4e-6) and kernels == 2  # (3 + 1) us per call; host and XLA Ops lines ignored
  with pytest.raises(RuntimeError, match="no kernel events"):
    gpu_check.kernel_seconds(profile, calls=2, device_prefix="/device:TPU")


def test_looped_calls_the_function_each_iteration():
  x = jnp.arange(1.0, 5.0)
  run = gpu_check.looped(lambda x: (x * 2, x[1:] + 1), calls=3)
  assert float(run(x)) == 3 * (2.0 + 3.0)  # each call's first output elements, three calls
  assert gpu_check.time_fn(run, (x,), reps=2) > 0


def test_summary_reports_the_issue_targets():
  row = lambda length, mask, impl, f, fb: dict(length=length, mask=mask, impl=impl, fwd_device_s=f,
                                               fwd_bwd_device_s=fb)
  rows = [row(16384, "causal", "pallas_mgpu", 1.0, 3.0), row(16384, "causal", "cudnn", 1.2, 3.4),
          row(32768, "causal", "pallas_gpu", 4.0, 12.0), row(32768, "window(1024,0)", "pallas_gpu", 0.5, 1.5)]
  lines = gpu_check.summary(rows)
  assert "forward 1.20x" in lines[0] and "backward 1.10x" in lines[0]
  assert "window(1024,0) is 8.0x faster" in lines[1]


def test_check_case_passes_the_interpreted_kernels():
  result = gpu_check.check_case(gpu_check.TINY_CASES[0], interpret=True)
  assert result["ok"], result


def test_check_case_fails_a_wrong_kernel(monkeypatch):
  """The check can fail: a kernel off by 1% in its output is reported."""
  def wrong(q, k, v, *, interpret, **kw):
    out, lse = reference_with_lse(q, k, v, **kw)
    return out * 1.01, lse

  monkeypatch.setattr(gpu_check.pallas_gpu, "flash_attention_with_lse", wrong)
  result = gpu_check.check_case(gpu_check.TINY_CASES[0], interpret=True)
  assert not result["ok"] and result["out"] > 5e-3
