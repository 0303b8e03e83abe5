"""``python -m etj_operator``: the same as the ``etj`` command."""

from etj_operator.cli import main

raise SystemExit(main())
