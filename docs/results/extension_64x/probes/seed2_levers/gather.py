"""Collect seed 2's lever probes (run.sh) into results.json: passkey by length and depth (with which key
digits the misses got wrong), MQAR and the indexer's recall where evaluated."""
import collections
import json
import os

os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 5))  # the repo root
RUNS = {  # name -> (run directory, eval tag)
  # recipe v3's local chain, moved aside when recipe v4 (base_rand, 600 steps at 64x) retrained the seed
  "local: recipe (8x_rand 800 steps, stride 2, base mix), then 8x": ("runs/ext64_v3/seed2/local/8x_yarn", ""),
  "local: 8x_rand 1600 steps, then 8x": ("runs/probe_s2local/steps1600/8x_yarn", ""),
  "local: 8x_rand with position_stride 3, then 8x": ("runs/probe_s2local/stride3/8x_yarn", ""),
  "local: 8x_rand with passkey 0.5 / mqar 0.3, then 8x": ("runs/probe_s2local/passkey50/8x_yarn", ""),
  "local: 8x_rand 1600 + 1600 steps, then 8x": ("runs/probe_s2local/steps3200/8x_yarn", ""),
  "local_lg (LG) base": ("runs/ext64/seed2/local_lg/base", "quick"),
  "local_lg (LG): 8x_rand, then 8x (the recipe)": ("runs/ext64/seed2/local_lg/8x_yarn", "quick"),
  "local: base + 1000 steps at L0 on randomised positions (basejit)": ("runs/probe_s2local/basejit/base", "quick"),
  "local: basejit, then 8x_rand and 8x (the recipe)": ("runs/probe_s2local/basejit/8x_yarn", "quick"),
  "local: basejit, then the recipe to 64x": ("runs/probe_s2local/basejit/64x_yarn", "quick"),
  # session 9, on recipe v4's local chain (moved to runs/ext64_v4 when recipe v5 retrained the 64x stage)
  "local v4 64x (600 steps at the constant rate)": ("runs/ext64_v4/seed2/local/64x_yarn", ""),
  "local v4 64x + 200 steps decaying to 0 (cool200)": ("runs/probe_s2local/cool200", "quick"),
  "local: base_rand 2000 steps, the chain, 64x 600 + 200 decaying (br2000)": ("runs/probe_s2local/br2000/64x_yarn",
                                                                              "quick"),
  "local v5 64x (600 + 200 decaying, episodes from 2 L0)": ("runs/ext64_v5/seed2/local/64x_yarn", ""),
  "local v5 64x + 400 steps (200 constant, 200 decaying; v5_400)": ("runs/probe_s2local/v5_400", "quick"),
  "local: basejit to 64x, read at attention_factor 1.6": ("runs/probe_s2local/basejit/64x_yarn", "t1.6"),
  "local: basejit, 64x stage 200 steps": ("runs/probe_s2local/basejit/64x200_yarn", "quick"),
  "local: basejit, 64x stage 200 + 200 steps": ("runs/probe_s2local/basejit/64x400_yarn", "quick"),
  "local: basejit, 64x stage 200 + 200 + 200 steps": ("runs/probe_s2local/basejit/64x600_yarn", "quick"),
  "local: basejit, 64x stage 200 + 200 + 200 + 200 steps": ("runs/probe_s2local/basejit/64x800_yarn", "quick"),
  # session 10, on recipe v5's 64x runs (moved to runs/ext64_v5 when recipe v6 retrained them)
  **{f"local v5 64x read with log-n attention from {n}": ("runs/ext64_v5/seed2/local/64x_yarn", f"logn{n}")
     for n in (1024, 2048, 4096)},
  **{f"global v5 64x read with log-n attention from {n}": ("runs/ext64_v5/seed2/global/64x_yarn", f"logn{n}")
     for n in (1024, 4096)},
  "local v5 64x + 400 steps on whole-row episodes only (whole400)": ("runs/probe_s2local/whole400", "quick"),
  "local 64x stage trained with log-n attention from 1024 (logn1024)": ("runs/probe_s2local/logn1024", "quick"),
  "global 64x stage trained with log-n attention from 1024 (global_logn1024)": (
      "runs/probe_s2local/global_logn1024", "quick"),
  **{f"local 64x stage with passkey_whole_rate {r}": (f"runs/probe_s2local/whole_rate{r}", "quick")
     for r in (0.25, 0.5)},
  "global 64x: attention_factor 1.416 (trained)": ("runs/ext64_v5/seed2/global/64x_yarn", ""),
  "global 64x: attention_factor 1.6 at eval": ("runs/ext64_v5/seed2/global/64x_yarn", "attention_factor_1.6"),
  "global 64x: attention_factor 1.6 at eval, 128-4096": ("runs/ext64_v5/seed2/global/64x_yarn",
                                                            "attention_factor_1.6_short"),
  "dsa_rope (DG, RoPE in the indexer) 64x": ("runs/ext64/seed2/dsa_rope/64x_yarn", ""),
  "dsa_rope (DG): 50 dense warm-up steps at 8192, then the 64x stage": ("runs/probe_s2dsa/64x_yarn", "quick"),
  "dsa_rope (DG) 64x, continued 200 steps": ("runs/probe_s2dsa/64x300_yarn", "quick"),
  "dsa (DG, no RoPE in the indexer) 64x": ("runs/ext64/seed2/dsa/64x_yarn", "quick"),
  "dsa_gd (GD) 64x": ("runs/ext64/seed2/dsa_gd/64x_yarn", ""),
  "dsa_gd (GD) 64x: attention_factor 1.6 at eval": ("runs/ext64/seed2/dsa_gd/64x_yarn", "attention_factor_1.6"),
}


def wrong_digits(examples, length):
  """Misses at `length` by the set of key digits (1-5) they got wrong, most common first."""
  c = collections.Counter("".join(str(i + 1) for i, (a, b) in enumerate(zip(e["key"], e["predicted"])) if a != b)
                          for e in examples if e["length"] == length and not e["correct"])
  return dict(c.most_common())


out = {}
for name, (wd, tag) in RUNS.items():
  ev = os.path.join(wd, "eval")
  if not os.path.isdir(ev):
    continue
  d = os.path.join(ev, sorted(os.listdir(ev), key=int)[-1], tag)
  r = {"workdir": wd, "tag": tag}
  pk = json.load(open(os.path.join(d, "passkey.json")))
  r["passkey_depths"] = pk["depths"]
  r["passkey"] = {str(n): {"mean": round(m, 3), "by_depth": a, "wrong_digits": wrong_digits(pk["examples"], n)}
                  for n, m, a in zip(pk["lengths"], pk["accuracy_per_length"], pk["accuracy"])}
  if os.path.isfile(os.path.join(d, "mqar.json")):
    mq = json.load(open(os.path.join(d, "mqar.json")))
    r["mqar"] = {str(n): a for n, a in zip(mq["lengths"], mq["accuracy"])}
  if os.path.isfile(os.path.join(d, "indexer_recall.json")):
    ir = json.load(open(os.path.join(d, "indexer_recall.json")))
    r["indexer_recall"] = {m: {str(n): v[0] for n, v in zip(ir["lengths"], ir[m]) if v is not None}
                           for m in ("mqar_value", "passkey_digit", "passkey_digits_2_5") if m in ir}
  out[name] = r
# The copy heads are in copy_heads.json beside this file (benchmarks/passkey_copy_heads.py writes it).
json.dump({"levers": out}, open("docs/results/extension_64x/probes/seed2_levers/results.json", "w"), indent=1)
