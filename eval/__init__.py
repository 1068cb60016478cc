"""Evaluation of train.py checkpoints: perplexity vs length, passkey retrieval grid, MLM accuracy, plots.

  python -m eval --workdir=runs/demo --tasks=perplexity,passkey --lengths=256,512,1024
  from training import restore; r = restore.restore("runs/demo"); r.model, r.config, r.step  (the run reader)
"""
