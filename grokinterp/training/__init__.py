"""Training: optimizers and gradient filters, checkpoint schedules, the trainer (DESIGN §4)."""

from grokinterp.training.schedule import checkpoint_schedule
from grokinterp.training.trainer import train

__all__ = ["checkpoint_schedule", "train"]
