import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def tiny_config():
    """A demo-shaped config small enough to train in about a second."""
    from grokinterp.config import apply_overrides, load_preset

    return apply_overrides(
        load_preset("demo"),
        [
            "task.p=11",
            "model.d_model=16",
            "model.n_heads=2",
            "model.d_head=8",
            "model.d_mlp=32",
            "train.steps=30",
            "train.eval_every=5",
            "train.checkpoint_every=10",
            "train.checkpoint_log_steps=4",
            "train.early_stop_acc=none",
        ],
    )
