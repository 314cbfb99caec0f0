"""``python -m ssb_trl prepare|train|evaluate``: the same as the ``ssb-trl`` command."""

from ssb_trl.cli import main

raise SystemExit(main())
