"""``python -m devices.agent``: see devices.agent.cli."""
from devices.agent.cli import main

raise SystemExit(main())
