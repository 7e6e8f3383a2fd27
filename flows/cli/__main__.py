"""``python -m flows.cli``: the ``mlcycle`` console script."""

from flows.cli.main import console_main

console_main()
