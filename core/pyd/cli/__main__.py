"""``python -m pyd.cli``: the same as the ``pyd`` command."""

from pyd.cli.main import main

main()
