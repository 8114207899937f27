"""``python -m harmony``."""

from harmony.cli import main

raise SystemExit(main())
