"""The agent's timing statistics: the server's own ``devices/measure/stats.py``, loaded without torch.

The agent must compute exactly what the server computes (the same percentiles, the same spread),
so it uses the same file rather than a copy. That file needs only numpy, but importing it as
``devices.measure.stats`` would first run ``devices/measure/__init__.py``, which imports torch
(its runtimes need it) -- and torch is not on a phone. So this module reads the file's source
through the ``devices`` package's loader (``pkgutil.get_data``) and executes it as a module of its
own, ``devices.agent.shared_stats``. The loader works the same on the source tree and inside the
``netadapt-agent.pyz`` download, which carries ``devices/measure/stats.py`` at the same place
(and not ``devices/measure/__init__.py``); see devices/agent_files.py and docs/agent.md.
"""
from __future__ import annotations

import importlib.util
import os
import pkgutil
import sys
from types import ModuleType

SHARED_FILE = "measure/stats.py"  # relative to the devices package
MODULE_NAME = "devices.agent.shared_stats"


def load_shared_stats() -> ModuleType:
    """The module built from devices/measure/stats.py (once per process)."""
    module = sys.modules.get(MODULE_NAME)
    if module is not None:
        return module
    source = pkgutil.get_data("devices", SHARED_FILE)
    if source is None:
        raise ImportError(f"devices/{SHARED_FILE} cannot be read: the agent needs it")
    import devices

    origin = os.path.join(os.path.dirname(devices.__file__), *SHARED_FILE.split("/"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(MODULE_NAME, loader=None,
                                                                             origin=origin))
    sys.modules[MODULE_NAME] = module  # dataclasses look their class's module up while decorating
    try:
        exec(compile(source, origin, "exec"), module.__dict__)
    except BaseException:
        del sys.modules[MODULE_NAME]
        raise
    return module


_shared = load_shared_stats()
TimingStats = _shared.TimingStats
TimedSamples = _shared.TimedSamples
interleaved_samples = _shared.interleaved_samples
timed_with_retries = _shared.timed_with_retries
ort_session_options = _shared.ort_session_options
