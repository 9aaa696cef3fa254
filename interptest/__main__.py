"""``python -m interptest``: the ``interptest`` command."""

from interptest.cli import main

raise SystemExit(main())
