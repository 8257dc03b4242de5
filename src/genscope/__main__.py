"""``python -m genscope ...``: the same as the ``genscope`` command."""

from genscope.cli import run

run()
