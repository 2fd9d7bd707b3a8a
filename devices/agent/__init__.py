"""The agent program: measures layer and network latency on a remote device for NetAdapt Studio.

Run it on the device (``python -m devices.agent --server URL --pair CODE`` the first time, then
``python -m devices.agent``; or the ``netadapt-agent.pyz`` download of the same code). It pairs
once with a one-time code, keeps the device token in a state file, and then serves the device's
measurement requests over a websocket: it downloads each request's ONNX files, times them with
ONNX Runtime under the server's timing protocol, and sends the statistics back in batches.

This package is pure: the standard library, numpy, onnxruntime and websockets, nothing else (no
torch, no Django; tests check it). The server side is ``devices.consumers`` (the websocket) and
``devices.agent_views`` (pairing and file downloads); ``devices.agent.protocol`` holds what both
sides must agree on. docs/agent.md describes the protocol and the installation.
"""

AGENT_VERSION = "1.0"
