"""Long-context decoding of the tiny decoder on the CPU: KV-cache bytes, chunked-prefill time and memory,
per-token decode time, and a teacher-forced check of the generated tokens, at 8K / 32K / 128K tokens.

  nice -n 10 python -m benchmarks.decode --json=docs/results/decode_results.json [--patterns=G,L,D]
      [--contexts=8192,32768,131072] [--prefill_chunk=8192] [--new_tokens=8] [--reps=20]

One model per attention pattern ("G" global, "L" sliding window, "D" DSA): configs/decoder_tiny.py:tiny's
shapes (d_model 64, 4 heads of 16, 2 kv heads, 2 layers, window 16, DSA indexer 2 heads of 16 and top_k 16),
max_len raised to the context, random weights (seed 0), float32. For each context L:

  - prompt: the first L byte tokens of the built-in corpus (the standard library's sources, concatenated);
  - prefill: DecoderLM.prefill_last with prefill_chunk tokens per chunk, jit-compiled first (compile time
    apart), then run once: wall and process CPU seconds; its compiled temp bytes
    (memory_analysis().temp_size_in_bytes) beside those of the one-shot prefill (prefill_chunk=None, compiled
    only, never run);
  - KV-cache bytes: the sum of the nbytes of the cache pytree's arrays (capacity L + 32 positions; DSA's
    indexer keys included);
  - generation: new_tokens greedy tokens, each the argmax of the previous step's logits, through a
    jit-compiled DecoderLM.decode_step (what models.generate runs in its scan), and the check: they equal
    the argmax of one teacher-forced forward over prompt + generated (features() then the head at the last
    new_tokens positions only; attention impl "auto", the blockwise "xla" one on the CPU, memory-linear);
    the largest |logit| difference and the smallest top-1/top-2 logit margin are recorded beside it;
  - per-token decode time: the same jit-compiled decode_step with the cache donated (updated in place),
    continued from the generated tokens: 2 warm-up steps, then `reps` timed steps, each waited for with
    jax.block_until_ready; the median wall seconds (and the mean process CPU seconds) per step.

The machine is a loaded 2-core CPU shared with other jobs: absolute times are CPU times only; the ratios
between patterns and lengths are what carry over. Also written: DSA's per-token decode FLOPs against global
attention at DeepSeek-V3.2-Exp's shapes (v32_decode_flops).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import data as data_lib  # noqa: E402
import models  # noqa: E402
from configs import decoder_tiny  # noqa: E402
from training.config import from_config_dict  # noqa: E402

# DeepSeek-V3.2-Exp (deepseek-ai/DeepSeek-V3.2-Exp, inference/model.py ModelArgs and the 671B config of
# DeepSeek-V3 it keeps): MLA with 128 heads, qk head dim 192 = 128 nope + 64 rope, v head dim 128, a KV
# latent of kv_lora_rank 512; lightning indexer with 64 heads of dim 128 and top-k 2048; 61 layers.
V32 = dict(layers=61, heads=128, qk_nope_dim=128, qk_rope_dim=64, v_dim=128, kv_lora_rank=512, index_heads=64,
           index_dim=128, top_k=2048)


def v32_decode_flops(context: int, shapes: dict = V32) -> dict:
  """Attention FLOPs of one decoded token with `context` tokens before it, at DeepSeek-V3.2-Exp's shapes.

  Convention: MLA decoded MQA-style over the cached latent, as V3.2's inference code does (its "MHA
  decode" branch absorbs wkv_b into the query and the output): each of the 128 heads scores a key against
  the 512-dim latent + the 64-dim rope key and reads the 512-dim latent as its value, so a key costs
  2 * heads * ((512 + 64) + 512) FLOPs. Global attention reads every key; DSA reads min(context, top_k)
  keys plus the lightning indexer over every key (2 * index_heads * index_dim per key, plus the weighted
  sum over index heads). The absorbed projections (q_nope -> latent, latent -> v: O(1) per token, the same
  for both) are left out. "mha" gives the same count for the un-absorbed convention (192-dim q/k, 128-dim
  v per head), for reference.
  """
  s = shapes
  per_key = 2 * s["heads"] * (s["kv_lora_rank"] + s["qk_rope_dim"] + s["kv_lora_rank"])
  per_key_mha = 2 * s["heads"] * (s["qk_nope_dim"] + s["qk_rope_dim"] + s["v_dim"])
  indexer = context * (2 * s["index_heads"] * s["index_dim"] + 2 * s["index_heads"])
  selected = min(context, s["top_k"])
  out = {"context": context, "layers": s["layers"]}
  for name, pk in (("mqa_latent", per_key), ("mha", per_key_mha)):
    glob, dsa = context * pk, selected * pk + indexer
    out[name] = {"global_per_layer": glob, "dsa_per_layer": dsa, "dsa_indexer_per_layer": indexer,
                 "global_all_layers": glob * s["layers"], "dsa_all_layers": dsa * s["layers"],
                 "global_over_dsa": glob / dsa}
  return out


def tiny_config(pattern: str, max_len: int):
  c = decoder_tiny.get_config("tiny")
  c.model.update(attention_pattern=pattern, max_len=max_len)
  return from_config_dict(c).model


def corpus_tokens(n: int) -> np.ndarray:
  """The first n byte tokens of the built-in corpus's documents, concatenated in name order."""
  tok = data_lib.tokenizer.get_tokenizer()
  out, total = [], 0
  for doc in data_lib.corpus.load_documents(data_lib.corpus.BUILTIN):
    ids = tok.encode(doc.text)
    out.append(ids)
    total += len(ids)
    if total >= n:
      break
  return np.concatenate(out)[:n].astype(np.int32)


def cache_bytes(cache) -> int:
  return int(sum(x.nbytes for x in jax.tree.leaves(cache)))


def _clock():
  return time.perf_counter(), time.process_time()


def _since(t):
  return time.perf_counter() - t[0], time.process_time() - t[1]


def run_row(pattern: str, context: int, *, prefill_chunk: int, new_tokens: int, reps: int, prompt: np.ndarray):
  """Every measurement of one (pattern, context) pair; see the module docstring."""
  extra = new_tokens + 2 + reps
  cache_len = context + extra
  cfg = tiny_config(pattern, cache_len)
  model = models.build_model(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  tokens = jnp.asarray(prompt[None, :context])
  lengths = jnp.array([context], jnp.int32)
  row = {"pattern": pattern, "context": context, "prefill_chunk": prefill_chunk, "cache_len": cache_len}

  def prefill_fn(chunk):
    return jax.jit(lambda s, t, n: nnx.merge(graphdef, s).prefill_last(t, n, cache_len, prefill_chunk=chunk))

  t = _clock()
  compiled = prefill_fn(prefill_chunk).lower(state, tokens, lengths).compile()
  row["prefill_compile_s"] = _since(t)[0]
  row["prefill_temp_bytes"] = int(compiled.memory_analysis().temp_size_in_bytes)
  row["one_shot_prefill_temp_bytes"] = int(
      prefill_fn(None).lower(state, tokens, lengths).compile().memory_analysis().temp_size_in_bytes)
  t = _clock()
  logits, cache = jax.block_until_ready(compiled(state, tokens, lengths))
  row["prefill_wall_s"], row["prefill_cpu_s"] = _since(t)
  row["kv_cache_bytes"] = cache_bytes(cache["layers"])
  row["kv_cache_bytes_per_layer"] = [cache_bytes(c) for c in cache["layers"]]

  step = jax.jit(lambda s, tok, c: nnx.merge(graphdef, s).decode_step(tok, c), donate_argnums=2)
  generated, step_logits = [], []
  tok = jnp.argmax(logits, -1).astype(jnp.int32)
  for _ in range(new_tokens):  # greedy: each token is the argmax of the logits before it
    generated.append(int(tok[0]))
    step_logits.append(logits[0])
    logits, cache = step(state, tok, cache)
    tok = jnp.argmax(logits, -1).astype(jnp.int32)

  # Teacher forcing: one forward over prompt + generated; logits at the positions that predicted them.
  seq = jnp.concatenate([tokens, jnp.asarray([generated[:-1]], jnp.int32)], axis=1)

  @jax.jit
  def forced(s, seq):
    m = nnx.merge(graphdef, s)
    x, _ = m.features(seq)
    return jnp.einsum("btd,dv->btv", x[:, context - 1:].astype(jnp.float32), m.head()[0])[0]  # [new, V]

  forced = forced.lower(state, seq).compile()
  t = _clock()
  ref = jax.block_until_ready(forced(state, seq))
  row["teacher_forced_wall_s"], row["teacher_forced_cpu_s"] = _since(t)
  ref_tokens = np.asarray(jnp.argmax(ref, -1)).tolist()
  top2 = np.sort(np.asarray(ref), -1)[:, -2:]
  row.update(generated=generated, teacher_forced_argmax=ref_tokens, match=generated == ref_tokens,
             max_abs_logit_diff=float(jnp.abs(jnp.stack(step_logits) - ref).max()),
             min_top2_margin=float((top2[:, 1] - top2[:, 0]).min()))

  times, cpu = [], []
  for i in range(2 + reps):
    t = _clock()
    logits, cache = jax.block_until_ready(step(state, tok, cache))
    wall, c = _since(t)
    tok = jnp.argmax(logits, -1).astype(jnp.int32)
    if i >= 2:
      times.append(wall)
      cpu.append(c)
  row.update(decode_reps=reps, decode_s_per_token=statistics.median(times),
             decode_cpu_s_per_token=float(np.mean(cpu)))
  return row


def markdown(results: dict) -> str:
  """The tables of docs/results.md from a results JSON (python -m benchmarks.decode --table --json=PATH)."""
  mib = lambda b: f"{b / 2**20:.2f}"
  lines = ["| pattern | context | KV cache MiB | decode ms/token (wall, median) | decode CPU ms/token | reps | "
           "prefill s (wall / CPU) | prefill temp MiB, chunked / one-shot | 8 greedy tokens = teacher-forced argmax |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in results["rows"]:
    lines.append(f"| {r['pattern']} | {r['context']} | {mib(r['kv_cache_bytes'])} | "
                 f"{1e3 * r['decode_s_per_token']:.2f} | {1e3 * r['decode_cpu_s_per_token']:.2f} | {r['decode_reps']} | "
                 f"{r['prefill_wall_s']:.1f} / {r['prefill_cpu_s']:.1f} | {mib(r['prefill_temp_bytes'])} / "
                 f"{mib(r['one_shot_prefill_temp_bytes'])} | {'yes' if r['match'] else 'NO'} |")
  lines += ["", "| context | global GFLOP/token (61 layers) | DSA GFLOP/token (61 layers) | of which indexer | "
            "global / DSA |", "|---|---|---|---|---|"]
  for f in results["v32_decode_flops"]:
    m = f["mqa_latent"]
    lines.append(f"| {f['context']} | {m['global_all_layers'] / 1e9:.1f} | {m['dsa_all_layers'] / 1e9:.1f} | "
                 f"{m['dsa_indexer_per_layer'] * f['layers'] / 1e9:.1f} | {m['global_over_dsa']:.1f}x |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--json", default="docs/results/decode_results.json")
  p.add_argument("--patterns", default="G,L,D")
  p.add_argument("--contexts", default="8192,32768,131072")
  p.add_argument("--prefill_chunk", type=int, default=8192)
  p.add_argument("--new_tokens", type=int, default=8)
  p.add_argument("--reps", type=int, default=20)
  p.add_argument("--reps_at", default="", help="per-row repeat counts, e.g. G:131072=10 (fewer where slow)")
  p.add_argument("--table", action="store_true", help="print the docs/results.md tables of --json and exit")
  args = p.parse_args(argv)
  if args.table:
    with open(args.json) as f:
      print(markdown(json.load(f)))
    return
  reps_at = dict(kv.split("=") for kv in args.reps_at.split(",") if kv)
  contexts = [int(x) for x in args.contexts.split(",")]
  prompt = corpus_tokens(max(contexts))
  results = {}
  if os.path.exists(args.json):  # rows are added to (or replace those in) an earlier run's file
    with open(args.json) as f:
      results = json.load(f)
  rows = {(r["pattern"], r["context"]): r for r in results.get("rows", [])}
  results.update(machine=f"{platform.machine()} {os.cpu_count()}-core CPU, loaded (shared with other jobs); "
                         f"jax {jax.__version__}, backend {jax.default_backend()}",
                 model="configs/decoder_tiny.py:tiny shapes, random weights (seed 0), float32",
                 v32_decode_flops=[v32_decode_flops(c) for c in (8192, 32768, 131072)],
                 v32_shapes=V32, v32_source="deepseek-ai/DeepSeek-V3.2-Exp inference/model.py (ModelArgs, MLA "
                 "decode branch) and DeepSeek-V3's config (61 layers, 128 heads)")
  for pattern in args.patterns.split(","):
    for context in contexts:
      reps = int(reps_at.get(f"{pattern}:{context}", args.reps))
      t = _clock()
      row = run_row(pattern, context, prefill_chunk=args.prefill_chunk, new_tokens=args.new_tokens, reps=reps,
                    prompt=prompt)
      row["row_wall_s"], row["row_cpu_s"] = _since(t)
      rows[(pattern, context)] = row
      print(json.dumps({k: v for k, v in row.items() if k not in ("generated", "teacher_forced_argmax")}),
            flush=True)
      results["rows"] = sorted(rows.values(), key=lambda r: ("GLD".index(r["pattern"]), r["context"]))
      with open(args.json, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
