"""grokinterp: mechanistic interpretability of grokking.

Train small models with dense checkpoints and watch, checkpoint by checkpoint, how the
generalising circuit forms. See README.md and DESIGN.md for the map.
"""

from grokinterp._version import __version__  # noqa: E402

from grokinterp.config import GrokinterpError, RunConfig, load_preset  # noqa: E402
from grokinterp.store import Run  # noqa: E402
from grokinterp.tasks import make_task  # noqa: E402
from grokinterp.training import train  # noqa: E402

__all__ = [
    "GrokinterpError",
    "Run",
    "RunConfig",
    "__version__",
    "load_preset",
    "make_task",
    "train",
]
