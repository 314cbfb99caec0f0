"""The recipes as importable modules, shaped like TRL's scripts: each has ``make_parser()`` and ``main(...)``.

They run as ``ssb-trl prepare|label|train|evaluate|inspect`` (console script), ``python -m ssb_trl.scripts.<name>``,
or ``accelerate launch -m ssb_trl.scripts.<name>``; ``recipes/*.py`` in a clone are thin shims over them. What they
share (logging, parsing, one-line errors) is :mod:`ssb_trl.scripts.common`.
"""
