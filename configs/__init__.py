"""Experiment configs: one file per experiment, get_config(arg) -> ConfigDict; `tiny` shrinks any of them."""
