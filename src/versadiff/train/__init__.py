"""Training: the accelerate trainer (trainer.py), EMA (ema.py), atomic checkpoints (checkpoint.py),
numbered run folders (rundir.py) and the stats log (logging.py).

Import `Trainer` / `train` from versadiff.train.trainer; this package file stays import-light so that
inference code can use the checkpoint helpers without loading accelerate.
"""
