"""Test setup: 8 fake CPU devices (for mesh tests) before jax is imported anywhere, float32 matmuls.

TPU kernels are compiled (not only lowered) for TPU topologies with libtpu from a `pip install --target`
directory: LONGCTX_LIBTPU_DIR, default ~/.cache/longctx/libtpu (where .ci/run installs the version jax[tpu]
pins). It is kept off sys.path until a test asks for a topology, so jax never tries to start a TPU.
"""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# XLA:CPU aborts the whole process (SIGABRT) when one of the 8 fake devices reaches a collective more than
# its terminate timeout after the others; on a loaded 2-core machine one device thread can lag that long.
# The suite's time is mostly XLA:CPU compiles of small programs: LLVM at -O0 (HLO passes, fusion, buffer
# assignment and float semantics unchanged; no fast-math either way) cuts compile CPU time by ~30%. The
# legacy (elemental IR) fusion emitters instead of the MLIR ones, and one LLVM module instead of parallel
# codegen splits, cut it by another ~2-3x on small programs. Float semantics are unchanged; XLA:CPU fuses a
# little less without the MLIR emitters (memory_analysis of a decoder's grad and of flash attention's moves
# by < 0.3%). Any of these flags set in XLA_FLAGS overrides the default here.
for _flag in ("xla_cpu_collective_call_warn_stuck_timeout_seconds=300",
              "xla_cpu_collective_call_terminate_timeout_seconds=900", "xla_cpu_collective_timeout_seconds=900",
              "xla_backend_optimization_level=0", "xla_cpu_use_fusion_emitters=false",
              "xla_cpu_parallel_codegen_split_count=1"):
  if _flag.split("=")[0] not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --" + _flag
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# pytest.ini runs the suite in 2 xdist workers: libtpu (the TPU compile tests) otherwise refuses to load in
# a second process while the first holds its lock file.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def tpu_device():
  """tpu_device(topology_name) -> the first device of an AOT TPU topology (e.g. "v5e:2x2"), via libtpu."""
  libtpu_dir = os.environ.get("LONGCTX_LIBTPU_DIR", os.path.expanduser("~/.cache/longctx/libtpu"))
  if not os.path.isdir(os.path.join(libtpu_dir, "libtpu")):
    pytest.skip(f"no libtpu in {libtpu_dir} (set LONGCTX_LIBTPU_DIR; .ci/run installs it): only "
                "cross-lowering is checked")
  if libtpu_dir not in sys.path:
    sys.path.append(libtpu_dir)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # no TPU VM metadata to read it from
  from jax.experimental import topologies
  return lambda name: topologies.get_topology_desc(topology_name=name, platform="tpu").devices[0]
