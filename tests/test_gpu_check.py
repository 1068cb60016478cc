"""The CPU-side parts of benchmarks/gpu_check.py: FLOP table, shapes, arguments, the correctness check."""

import pytest

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
  assert args.lengths == [4096, 16384, 32768] and args.reps == 10 and not args.interpret
  assert gpu_check.parse_args(["--lengths", "1024,2048", "--reps", "3"]).lengths == [1024, 2048]
  for bad in (["--lengths", "4k"], ["--reps", "0"], ["--lengths", ","]):
    with pytest.raises(SystemExit):
      gpu_check.parse_args(bad)


def test_check_case_passes_the_interpreted_kernels():
  result = gpu_check.check_case(gpu_check.TINY_CASES[0], interpret=True)
  assert result["ok"], result


def test_check_case_fails_a_wrong_kernel(monkeypatch):
  """The check can fail: a kernel off by 1% in its output is reported."""
  def wrong(q, k, v, *, interpret, **kw):
    out, lse = gpu_check._reference_with_lse(q, k, v, **kw)
    return out * 1.01, lse

  monkeypatch.setattr(gpu_check.pallas_gpu, "flash_attention_with_lse", wrong)
  result = gpu_check.check_case(gpu_check.TINY_CASES[0], interpret=True)
  assert not result["ok"] and result["out"] > 5e-3
