"""``python -m grokinterp.cli``: the same as the ``grokinterp`` command."""

from grokinterp.cli import main

main()
