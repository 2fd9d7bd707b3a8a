"""Command line of the agent: pair once, then serve the device's measurement requests.

    python -m devices.agent --server https://netadapt.example --pair ABCDE-FGHJK   # first run
    python -m devices.agent                                                       # later runs

(the download ``netadapt-agent.pyz`` takes the same arguments). Pairing stores the server and
the device token in a state file (``~/.netadapt-agent.json`` unless ``--state`` says otherwise),
readable by its owner only. Exit status: 0 when stopped (Ctrl+C, SIGTERM), 2 when it cannot
start (not paired, a refused code, an unreachable server while pairing), 3 when the server
refuses the token (revoked: pair again).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import stat
import sys
from pathlib import Path

from devices.agent import AGENT_VERSION

DEFAULT_STATE = "~/.netadapt-agent.json"
EXIT_STOPPED, EXIT_CANNOT_START, EXIT_REFUSED = 0, 2, 3

logger = logging.getLogger("netadapt.agent")


def read_state(path: Path) -> dict:
    """The saved pairing ({"server", "token", "device", "name"}), or {} when there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        state = json.loads(text)
    except ValueError:
        raise SystemExit(f"{path} is not a state file of this agent (not JSON): pair again with "
                         "--server URL --pair CODE, or pass another --state") from None
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("%s can be read by other users (mode %o): it holds the device token", path,
                       stat.S_IMODE(mode))
    return state if isinstance(state, dict) else {}


def write_state(path: Path, state: dict) -> None:
    """Write the state file with mode 0600, atomically (a crash leaves the old or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        os.chmod(temporary, 0o600)  # a leftover temporary file keeps its old mode otherwise
        json.dump(state, file, indent=2)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="netadapt-agent",
        description="Measure latency on this device for NetAdapt Studio. Pair once with the code "
                    "shown on the device's page (--server URL --pair CODE); later runs need no "
                    "arguments.")
    parser.add_argument("--server", help="the NetAdapt Studio address, e.g. https://netadapt.example "
                                         "(default: the one saved when pairing)")
    parser.add_argument("--pair", metavar="CODE", help="pair with this one-time code, then serve")
    parser.add_argument("--state", default=DEFAULT_STATE,
                        help=f"file that keeps the server and the device token (default {DEFAULT_STATE})")
    parser.add_argument("--batch", type=int, default=None,
                        help="layers timed together and sent in one message (default 16)")
    parser.add_argument("--max-backoff", type=float, default=None, metavar="SECONDS",
                        help="longest wait between reconnection attempts (default 60)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every message")
    parser.add_argument("--version", action="version", version=f"netadapt-agent {AGENT_VERSION}")
    args = parser.parse_args(argv)
    if args.batch is not None and args.batch < 1:
        parser.error("--batch must be at least 1")
    if args.max_backoff is not None and args.max_backoff <= 0:
        parser.error("--max-backoff must be positive")
    return args


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    if not args.verbose:
        logging.getLogger("websockets").setLevel(logging.WARNING)
    # Imported here so that --help and --version work even where onnxruntime is missing.
    from devices.agent.client import (DEFAULT_BATCH, MAX_BACKOFF_S, Agent, PairingFailed, Refused,
                                      normalise_server, pair, protect_logs)
    from devices.agent.facts import device_facts

    # No token or code in the log, whatever logs it (-v shows the websocket handshake's headers).
    redact = protect_logs(args.pair)

    signal.signal(signal.SIGTERM, _stop)
    state_path = Path(args.state).expanduser()
    state = read_state(state_path)
    redact.add(state.get("token") if isinstance(state.get("token"), str) else None)
    facts = device_facts()
    try:
        server = normalise_server(args.server or state.get("server") or "")
    except ValueError as error:
        if not (args.server or state.get("server")):
            logger.error("this agent is not paired yet: run it with --server URL --pair CODE (the code "
                         "is on the device's page in NetAdapt Studio)")
        else:
            logger.error("%s", error)
        return EXIT_CANNOT_START
    try:
        if args.pair:
            try:
                answer = pair(server, args.pair, facts)
            except PairingFailed as error:
                logger.error("%s", error)
                return EXIT_CANNOT_START
            except OSError as error:
                logger.error("cannot reach %s: %s", server, error)
                return EXIT_CANNOT_START
            redact.add(answer["token"])
            state = {"server": server, "token": answer["token"], "device": answer["device"],
                     "name": answer.get("name", "")}
            write_state(state_path, state)
            if answer.get("runtime") not in (None, "onnxruntime"):
                logger.warning("the device's runtime is %r but this agent measures with ONNX Runtime only: "
                               "change the device's runtime to onnxruntime", answer.get("runtime"))
            logger.info("paired as device %r (id %s; %s, %s thread(s)); the token is in %s",
                        answer.get("name"), answer["device"], answer.get("runtime"), answer.get("threads"),
                        state_path)
        elif not isinstance(state.get("token"), str):
            logger.error("this agent is not paired yet (no token in %s): run it with --server URL "
                         "--pair CODE", state_path)
            return EXIT_CANNOT_START
        logger.info("this device: %s, %s, %s core(s); ONNX Runtime %s, numpy %s", facts["os"],
                    facts["cpu_model"], facts["cores"], facts["onnxruntime"], facts["numpy"])
        agent = Agent(server, state["token"], facts=facts,
                      batch=args.batch or DEFAULT_BATCH, max_backoff=args.max_backoff or MAX_BACKOFF_S)
        try:
            agent.run_forever()
        except Refused as error:
            logger.error("%s", error)
            return EXIT_REFUSED
    except KeyboardInterrupt:
        logger.info("stopped")
        return EXIT_STOPPED
    return EXIT_STOPPED
