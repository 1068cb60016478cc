"""The base model of the context-extension experiment: a small decoder at L0 = 128 that retrieves (compact
passkey, MQAR), trained on the built-in text corpus with retrieval rows mixed in, on 2 CPU cores.

python train.py --config=configs/retrieval_base.py --workdir=runs/extension/base

Choices, and the evidence behind them (docs/extension.md has the runs):
  - Byte tokenizer; keys and values of MQAR from byte ids 128-191 / 192-255, which ASCII text never uses,
    so retrieval tokens have meanings of their own (data/mqar.py).
  - L0 = 128: the compact passkey prompt needs ~47 tokens, so 128 leaves real filler; 8x is 1024, where a
    fine-tune step still fits the CPU budget.
  - d_model 64, 2 layers, 4 heads of dim 16. Head dim 16 with theta 1e4: the 8 frequencies have wavelengths
    6.3, 20, 63, 199, 628, ... 19,869 tokens; 5 of the 8 never complete a turn within L0 = 128, the regime
    where PI, NTK and YaRN treat dimensions differently.
  - Smeared keys (model.smeared_keys; Olsson et al. 2022): every key is a learned mix of its own and the
    previous token's key, so a query can match "the position right after this key" in one layer. Without
    them MQAR needs a previous-token head in layer 1 composed with a matching head in layer 2, and on this CPU
    budget no run formed that pair: every MQAR model sat on a "copy some value of the row" plateau
    (accuracy ~ 1/pairs; docs/extension.md, 8 search runs and 2 full bases). Measured side by side
    by benchmarks/mqar_search.py (docs/results/mqar_smeared_keys.json; MQAR rows only, answer loss, the same seed and
    rows, 600 steps, 2-4 min each): smeared keys 94.5% at L0, plain keys 11.7% (answer loss 0.07 against
    1.63). The smear is local (one token back), so it does not touch what the RoPE rules change: the
    distances between a query and the keys it must find.
  - mqar_loss "answers" (data.train_dataset): MQAR rows score only their answers, each weighted so an episode
    counts as much as an episode of text, and the passkey answer is weighted up the same way. Full base runs
    with smeared keys (2026-12-02): 0/1 answer weights, MQAR 14.5% and passkey 20% at step 4000 (the answers
    were ~7% of the loss); MQAR answers weighted, MQAR 100% from step 1000 but passkey 52% at 4000 (right at
    depths 0.75-1, 12-38% earlier); both weighted (this config), MQAR 99-100% from step 1000, passkey 100%
    from step 2000 (eval probes of the checkpoints: docs/results/extension_probes_20261202/).
  - Retrieval rows are packs of episodes of 16, 32, 64 and 128 tokens (data.episode_min_len = 16): the
    gradient that turns a head toward the right key shrinks with the number of keys it spreads over, so
    short episodes make the heads form; long ones teach every distance up to L0.
  - 25% natural text, so perplexity is measured on text the model knows.
"""

from training.config import default_config, sized

L0 = 128


def get_config(arg: str = ""):
  c = default_config("decoder_tiny")
  c.model.update(vocab_size=272, d_model=64, num_layers=2, num_heads=4, num_kv_heads=4, head_dim=16,
                 mlp_dim=192, max_len=L0, attention_pattern="G", rope_theta=10000.0, smeared_keys=True)
  c.data.update(seq_len=L0, batch_size=32, val_fraction=0.02, max_documents=2000, num_val_batches=4,
                passkey_rate=0.2, passkey_prompt="compact", mqar_rate=0.55, episode_min_len=16,
                mqar_loss="answers")
  c.optim.update(learning_rate=3e-3, warmup_steps=100, weight_decay=0.1)
  c.update(num_steps=4000, log_every=100, eval_every=1000)
  c.checkpoint.update(every=1000, max_to_keep=5)
  c = sized(c, arg, "configs/retrieval_base.py")
  if arg == "tiny":
    c.data.update(passkey_rate=0.0, mqar_rate=0.5, episode_min_len=16)
  return c
