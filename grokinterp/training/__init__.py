"""Training (DESIGN §4): one seed-batched loop (:mod:`~grokinterp.training.loop`,
:mod:`~grokinterp.training.group`), engines that supply the forward/loss and the step
(:mod:`~grokinterp.training.engines`), optimizers and gradient filters
(:mod:`~grokinterp.training.optim`), checkpoint schedules, losses and the CPU determinism
settings (:mod:`~grokinterp.training.numerics`)."""

from grokinterp.training.loop import train
from grokinterp.training.numerics import loss_fn
from grokinterp.training.schedule import checkpoint_schedule
from grokinterp.training.seeds import parse_seeds, seed_dir, train_seeds

__all__ = ["checkpoint_schedule", "loss_fn", "parse_seeds", "seed_dir", "train", "train_seeds"]
