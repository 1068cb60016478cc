"""Collect the 64x-stage lever probes (seed 1) into one JSON: passkey by length and depth, MQAR by length."""
import json
import os
os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 5))  # the repo root
runs = {
  "local: recipe v2 (64x passkey 0.2 / mqar 0.55, uniform depth)": "runs/ext64_v2/seed1/local/64x_yarn",
  "local: 16x-64x with passkey_depth=log_distance": "runs/probe_depth/seed1/local/64x_yarn",
  "local: 64x with passkey 0.5 / mqar 0.3": "runs/probe_64x/seed1/local/pk50",
  "local: 64x with passkey 0.5 / mqar 0.3 and log_distance": "runs/probe_64x/seed1/local/pk50_logdist",
  "global: recipe v2": "runs/ext64_v2/seed1/global/64x_yarn",
  "global: 16x-64x with passkey_depth=log_distance": "runs/probe_depth/seed1/global/64x_yarn",
}
out = {}
for name, wd in runs.items():
  ev = os.path.join(wd, "eval")
  step = sorted(os.listdir(ev))[-1]
  r = {"workdir": wd}
  pk = json.load(open(os.path.join(ev, step, "passkey.json")))
  r["passkey_depths"] = pk["depths"]
  r["passkey"] = {str(n): {"mean": round(m, 3), "by_depth": a}
                  for n, m, a in zip(pk["lengths"], pk["accuracy_per_length"], pk["accuracy"])}
  for sub in ("", "mqar"):  # MQAR is in the run's eval or, when evaluated apart, under the tag "mqar"
    p = os.path.join(ev, step, sub, "mqar.json")
    if os.path.isfile(p):
      mq = json.load(open(p))
      r["mqar"] = {str(n): a for n, a in zip(mq["lengths"], mq["accuracy"])}
  out[name] = r
af = {}
for v in ("local", "global"):
  ev = f"runs/ext64_v2/seed1/{v}/64x_yarn/eval/100"
  for tag in sorted(t for t in os.listdir(ev) if t.startswith("probe_af")):
    pk = json.load(open(os.path.join(ev, tag, "passkey.json")))
    af.setdefault(v, {})[tag.removeprefix("probe_af")] = {
        str(n): {"mean": round(m, 3), "by_depth": dict(zip(map(str, pk["depths"]), a))}
        for n, m, a in zip(pk["lengths"], pk["accuracy_per_length"], pk["accuracy"])}
json.dump({"stage_levers": out, "eval_attention_factor": af},
          open("docs/results/extension_64x/probes/passkey_mix_64x/results.json", "w"), indent=1)
