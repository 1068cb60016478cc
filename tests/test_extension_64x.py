"""configs/extend_64x.py and benchmarks/extension_64x.py: the progressive stages base -> 8x -> 16x -> 32x
-> 64x chain and scale RoPE relative to L0, and a tiny dry run (every stage trained restoring the previous
one, the reported ones evaluated, then collected and merged by the runner into the report's schema)."""

import dataclasses
import json
import shutil
import subprocess
import sys

import pytest

from configs import extend_64x as e64
from eval.evaluate import evaluate
from training import from_config_dict, train_and_evaluate


@pytest.mark.parametrize("variant", e64.VARIANTS)
def test_stages_scale_rope_relative_to_l0(variant):
  thetas = []
  for stage, factor in e64.STAGES.items():
    yarn = from_config_dict(e64.get_config(f"{stage},{variant},yarn")).model
    abf = from_config_dict(e64.get_config(f"{stage},{variant},abf"))
    assert abf.data.seq_len == abf.model.max_len == yarn.max_len == factor * e64.L0
    thetas.append(abf.model.rope_theta)
    if factor > 1:
      assert (yarn.rope_scaling.kind, yarn.rope_scaling.factor, yarn.rope_scaling.original_max_len) == \
          ("yarn", factor, e64.L0)
      assert abf.model.rope_scaling.kind == "none"
    pattern = "".join(t.value for t in yarn.attention_pattern)
    own = {"global": "GG", "local": "GL", "dsa": "DG", "dsa_rope": "DG", "dsa_plain": "DG", "dsa_local": "DG"}
    assert pattern == own.get(variant, e64.PATTERNS.get(variant))
    if variant.startswith("dsa"):  # top_k fixed below L0: 1/256 of the keys at 64x
      assert yarn.dsa_top_k == 32 and yarn.dsa_smeared_keys == (variant != "dsa_plain")
      assert yarn.dsa_rope_dim == (0 if variant in ("dsa", "dsa_local") else 8)  # an indexer without RoPE
      assert yarn.dsa_local_keys == (16 if variant == "dsa_local" else 0)  # dsa_local: + the 16 nearest keys
    if "L" in pattern:  # the local layer's window stays below L0
      assert yarn.window == (32, 0)
  assert thetas == sorted(thetas) and thetas[0] < thetas[-1]  # ABF's theta grows with the factor
  chain = e64.chain(variant)
  local = variant == "local"
  base_stages = variant in ("local", "dsa", "dsa_local")  # dsa since recipe v9
  assert chain == ["base"] + (["base_passkey", "base_rand"] if base_stages else []) + [
      "8x_rand", "8x", "16x", "32x", "64x"]
  assert [e64.previous(s, variant) for s in chain] == [None] + chain[:-1]
  configs = [from_config_dict(e64.get_config(f"{s},{variant}")) for s in chain]
  assert [c.data.position_stride for c in configs] == [2 if s.endswith("_rand") else 1 for s in chain]
  rates = [(0.5, 0.3) if s in ("base_passkey", "64x") else (0.2, 0.55) for s in chain]  # base_passkey: local's
  assert [(c.data.passkey_rate, c.data.mqar_rate) for c in configs] == rates
  last = configs[-1]
  if variant in ("local", "dsa", "dsa_local"):  # local: 800 steps, dsa: 200, the last quarter decaying to 0,
    # episodes from 2 L0
    whole = 0.5 if local else 0.0  # local's passkey rows: half of them one whole-row prompt
    assert (last.num_steps, last.data.episode_min_len, last.data.passkey_whole_rate) == (
        800 if local else 200, 2 * e64.L0, whole)
    assert (last.optim.schedule, last.optim.decay_fraction, last.optim.min_lr_ratio) == ("wsd", 0.25, 0.0)
  else:  # global and the lever variants (dsa_rope, ...): 100 steps at constant lr, episodes from 8 L0
    assert (last.num_steps, last.data.episode_min_len, last.optim.schedule) == (100, 8 * e64.L0, "constant")
    assert last.data.passkey_whole_rate == 0.0
  # log-n attention from 8 L0 in global's 64x stage only: the earlier stages are the chain every variant shares
  assert [c.model.logn_attention for c in configs] == [0] * (len(chain) - 1) + [8 * e64.L0 * (variant == "global")]
  if base_stages:  # base_passkey: the base's length and RoPE, more passkey rows at a higher rate; base_rand:
    # the base's rows and RoPE, on randomised positions at the fine-tune rate
    base, more, jit = configs[:3]
    assert more.model == base.model and dataclasses.replace(more.data, passkey_rate=0.2, mqar_rate=0.55) == base.data
    assert (more.optim.learning_rate, more.optim.schedule, more.num_steps) == (1e-3, "constant", 1000)
    assert (jit.model, dataclasses.replace(jit.data, position_stride=1)) == (base.model, base.data)
    assert (jit.optim.learning_rate, jit.optim.schedule, jit.num_steps) == (3e-4, "constant", 1000)
  with pytest.raises(ValueError, match="extend_64x"):
    e64.get_config("128x")


def test_yarn_chains_are_also_read_at_the_eval_temperature():
  # In a subprocess: the benchmark defines absl flags that other benchmarks in this worker define too.
  code = "import json; from benchmarks import extension_64x as b; print(json.dumps([b.reads('yarn'), b.reads('abf')]))"
  yarn, abf = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                        text=True).stdout)
  assert e64.EVAL_TEMPERATURE == ("64x", 1.6)
  assert yarn == [[s, s, "", []] for s in e64.REPORTED] + [
      ["64x@t1.6", "64x", "t1.6", ["--config.model.rope_scaling.attention_factor=1.6"]]]
  assert [r[0] for r in abf] == list(e64.REPORTED)  # ABF has no YaRN temperature


def test_indexer_recall_at_64x_only_and_the_wall_estimate():
  # In a subprocess (absl flags, as above). Three variants of 60, 90 and 90 CPU s on 2 cores share them:
  # 90 s at 2/3 of a core each finishes global, then 30 s each alone: 120 s. A seed's slower run counts.
  code = """if True:
    import json
    from benchmarks import extension_64x as b
    from configs import extend_64x as e
    def seed(scale):
      timing = {}
      for v, total in [("global", 60.0), ("local", 90.0), ("dsa", 90.0)]:
        n = len(e.chain(v)) + len(b.reads("yarn"))
        names = ([f"train_{s if e.STAGES[s] == 1 else s + '_yarn'}" for s in e.chain(v)] +
                 [f"eval_{st if st == 'base' else st + '_yarn'}" + (f"@{t}" if t else "") for _, st, t, _ in b.reads("yarn")])
        timing[v] = {c: {"cpu_s": scale * total / n} for c in names}
      return {"timing": timing}
    tasks = {v: {n: b._tasks(v, n) for n, *_ in b.reads("yarn")} for v in ("global", "dsa")}
    print(json.dumps([tasks, b.wall_estimate([seed(0.5), seed(1.0)]), b.wall_estimate([{"timing": {}}])]))"""
  tasks, est, empty = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                                text=True).stdout)
  plain = ["perplexity", "passkey", "mqar"]
  assert tasks["global"] == {n: plain for n in tasks["global"]}
  assert tasks["dsa"] == {n: plain + (["indexer_recall"] if n == "64x" else []) for n in tasks["dsa"]}
  assert est["cpu_s"] == pytest.approx({"global": 60.0, "local": 90.0, "dsa": 90.0})
  assert est["wall_s"] == pytest.approx(120.0) and est["missing"] == []
  assert empty["wall_s"] == 0.0 and "dsa/eval_64x_yarn" in empty["missing"]


def test_tiny_stages_dry_run_and_report(tmp_path):
  root, lengths = tmp_path / "runs", [32, 64]
  def train(stage, variant, previous):
    c = e64.get_config(f"{stage},{variant},yarn,tiny")
    c.mesh.data = 1
    c.update(num_steps=1, eval_every=1, init_from=previous)
    c.optim.warmup_steps = 0
    c.checkpoint.every = 1
    wd = root / "seed0" / variant / (stage if e64.STAGES[stage] == 1 else f"{stage}_yarn")
    assert train_and_evaluate(c, str(wd))["step"] == 1
    return str(wd)

  # local's chain continues its base, on more passkey rows then on randomised positions, before any RoPE change
  train("base_rand", "local", train("base_passkey", "local", train("base", "local", "")))
  shutil.rmtree(root / "seed0" / "local")  # the report below is dsa's alone
  previous = ""
  for stage in e64.chain("dsa"):
    wd = previous = train(stage, "dsa", previous)
    if stage not in e64.REPORTED:
      continue
    for tag, overrides in [("", {})] + [(f"t{factor}", {"model.rope_scaling.attention_factor": factor})
                                        for s, factor in [e64.EVAL_TEMPERATURE] if s == stage]:
      recall = ["indexer_recall"] if (stage, tag) == ("64x", "") else []  # the benchmark's RECALL_READ
      evaluate(str(wd), tasks=["perplexity", "passkey", "mqar"] + recall, lengths=lengths,
               ppl_documents=1, passkey_samples=1, mqar_samples=1, tag=tag, overrides=overrides)
  (root / "seed0" / "wall.json").write_text(json.dumps(  # what benchmarks/extension_64x_seed.sh writes
      {"seed": 0, "wall_s": 600, "variants": ["dsa"], "processes": 1, "start": "2026-12-04T00:00:00Z"}))
  out = tmp_path / "report.json"
  subprocess.run([sys.executable, "-m", "benchmarks.extension_64x", "--tiny", f"--root={root}",
                  f"--results={tmp_path / 'seeds'}", f"--out={out}", f"--plots={tmp_path}", "--stages=collect,report",
                  f"--lengths={','.join(map(str, lengths))}"], check=True, capture_output=True)
  r = json.loads(out.read_text())
  assert r["seeds"] == [0] and r["lengths"] == lengths and list(r["variants"]) == ["dsa"]
  stages = r["variants"]["dsa"]["yarn"]
  assert list(stages) == list(e64.REPORTED) + ["64x@t1.6"]  # the 64x stage read again at YaRN temperature 1.6
  for name, cell in stages.items():
    assert set(cell["mqar"]) == {"32", "64"} and set(cell["passkey"]) == {"64"}  # 32 < a passkey prompt
    assert all(0.0 <= v["min"] <= v["mean"] <= 1.0 for v in cell["mqar"].values())
    recall = {"mqar_value", "mqar_key", "passkey_digit", "passkey_digits_2_5"} if name == "64x" else set()
    assert set(cell.get("indexer_recall", {})) == recall
  assert (tmp_path / "extension_64x.png").is_file() and (tmp_path / "extension_64x_table.md").is_file()
  assert r["wall"]["0"]["wall_s"] == 600  # the whole-seed wall time reaches the report and its table
  assert "Seed 0, the whole experiment (dsa" in (tmp_path / "extension_64x_table.md").read_text()
  # Runs do not outlive their machine: collecting again keeps a (variant, rule) that is in the seed's file
  # but gone from the root, names it under "kept", and recollects what the root still has.
  seed_file = tmp_path / "seeds" / "seed0.json"
  before = json.loads(seed_file.read_text())
  before["variants"]["global"] = {"yarn": before["variants"]["dsa"]["yarn"]}
  before["variants"]["dsa"]["yarn"]["base"]["passkey"] = {"64": -1.0}  # stale: the root's run replaces it
  seed_file.write_text(json.dumps(before))
  subprocess.run([sys.executable, "-m", "benchmarks.extension_64x", "--tiny", f"--root={root}",
                  f"--results={tmp_path / 'seeds'}", f"--out={out}", f"--plots={tmp_path}", "--stages=collect,report",
                  f"--lengths={','.join(map(str, lengths))}"], check=True, capture_output=True)
  after = json.loads(seed_file.read_text())
  assert after["kept"] == ["global/yarn"] and after["variants"]["global"] == before["variants"]["global"]
  assert after["variants"]["dsa"]["yarn"]["base"]["passkey"] == r["per_seed"]["0"]["dsa"]["yarn"]["base"]["passkey"]
  assert list(json.loads(out.read_text())["variants"]) == ["dsa", "global"]
  # A seed without the temperature read: its cell lists only the seeds that ran it, and the plot draws it.
  other = dict(after, seed=1)
  del other["variants"]["dsa"]["yarn"]["64x@t1.6"]
  (tmp_path / "seeds" / "seed1.json").write_text(json.dumps(other))
  subprocess.run([sys.executable, "-m", "benchmarks.extension_64x", "--tiny", f"--results={tmp_path / 'seeds'}",
                  f"--out={out}", f"--plots={tmp_path}", "--stages=report"], check=True, capture_output=True)
  merged = json.loads(out.read_text())["variants"]["dsa"]["yarn"]
  assert merged["64x@t1.6"]["seeds"] == [0] and merged["64x"]["seeds"] == [0, 1]

  # A 64x run that restored another run than the 32x stage (an older recipe's chain) is refused before
  # anything trains.
  stale = tmp_path / "stale" / "seed0" / "dsa" / "64x_yarn"
  shutil.copytree(root / "seed0" / "dsa" / "8x_yarn", stale)
  p = subprocess.run([sys.executable, "-m", "benchmarks.extension_64x", "--tiny", f"--root={tmp_path / 'stale'}",
                      "--seeds=0", "--variants=dsa", "--stages=train"], capture_output=True, text=True)
  assert p.returncode != 0 and "move it away" in p.stderr
  assert not (tmp_path / "stale" / "seed0" / "dsa" / "base").exists()
  # So is a run whose settings differ from the recipe's (this base trained without the tiny config's warm-up).
  shutil.rmtree(stale)
  shutil.copytree(root / "seed0" / "dsa" / "base", tmp_path / "stale" / "seed0" / "dsa" / "base")
  p = subprocess.run([sys.executable, "-m", "benchmarks.extension_64x", "--tiny", f"--root={tmp_path / 'stale'}",
                      "--seeds=0", "--variants=dsa", "--stages=train"], capture_output=True, text=True)
  assert p.returncode != 0 and "was trained with optim.warmup_steps=0" in p.stderr
  assert not (tmp_path / "stale" / "seed0" / "dsa" / "8x_rand_yarn").exists()



def test_levers_validate_every_stage_config(tmp_path):
  # benchmarks/extension_64x_levers.py checks every lever's overrides against the 64x config before it
  # trains anything; with nothing under --root, collect then finds no results.
  out = tmp_path / "levers.json"
  subprocess.run([sys.executable, "-m", "benchmarks.extension_64x_levers", f"--root={tmp_path}", "--stages=collect",
                  f"--out={out}"], check=True, capture_output=True)
  assert json.loads(out.read_text())["levers"] == {}
  p = subprocess.run([sys.executable, "-m", "benchmarks.extension_64x_levers", f"--root={tmp_path}",
                      "--stages=collect", "--levers=global/nope"], capture_output=True, text=True)
  assert p.returncode != 0 and "global/nope" in p.stderr
