"""Which steps to checkpoint: log-spaced early (memorisation happens in the first hundred steps),
then every N steps. Step 0 (the initialisation) and the last step are always kept."""

from __future__ import annotations

import numpy as np


def checkpoint_schedule(total_steps: int, every: int = 100, n_log: int = 20) -> list[int]:
    """Sorted checkpoint steps in ``[0, total_steps]``.

    ``n_log`` log-spaced steps in ``[1, every)`` are followed by every multiple of ``every``.
    """
    steps = {0, total_steps}
    if n_log > 0 and every > 1:
        steps.update(int(s) for s in np.unique(np.round(np.geomspace(1, every, n_log + 1)[:-1])))
    steps.update(range(every, total_steps + 1, every))
    return sorted(s for s in steps if 0 <= s <= total_steps)
