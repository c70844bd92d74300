"""``python -m tests.lab.nodeagent --kubeconfig KUBECONFIG --config agent.json``.

Prints ``ready {"hooks": "http://127.0.0.1:PORT"}`` on stdout once its Nodes are
registered, then runs until SIGTERM/SIGINT (or the death of the process that started it),
when it kills every pod and removes its network namespaces, veths, addresses and cgroups.
Logs go to stderr. What a SIGKILL leaves behind is removed by the next agent on the same
bridge.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import pathlib
import signal
import sys
import threading
from types import FrameType

from tests.lab.nodeagent.agent import Agent, AgentConfig
from tests.lab.nodeagent.api import KubeApi


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab.nodeagent", description=__doc__)
    parser.add_argument("--kubeconfig", required=True, help="an admin kubeconfig")
    parser.add_argument("--config", required=True, help="agent.json (see tests.lab.nodeagent)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = AgentConfig.from_dict(json.loads(pathlib.Path(args.config).read_text()))
        api = KubeApi(args.kubeconfig)
    except (OSError, ValueError) as exc:
        print(f"nodeagent: {exc}", file=sys.stderr)
        return 2
    agent = Agent(config, api)
    stop = threading.Event()
    # SIGTERM (a clean stop) when the process that started the agent dies
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        return 1

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        hooks = agent.start()
        print("ready " + json.dumps({"hooks": hooks}), flush=True)
        stop.wait()
    except Exception as exc:
        logging.getLogger("nodeagent").exception("start failed")
        print(f"nodeagent: {exc}", file=sys.stderr)
        return 1
    finally:
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
