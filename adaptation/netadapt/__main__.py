"""``python -m adaptation.netadapt``: see ``cli.py``."""
from .cli import main

raise SystemExit(main())
