"""``python -m alignspec`` (and ``accelerate launch -m alignspec train-head ...``) runs the CLI."""

from alignspec.cli import main

raise SystemExit(main())
