"""``python -m tests.lab --dir DIR``: a real cluster on this machine with TideTune installed,
until SIGTERM or Ctrl-C.

Prints one line containing ``ready`` when everything is up. Then, e.g.::

    export KUBECONFIG=DIR/kubeconfig
    kubectl apply -f examples/quickstart.yaml
    kubectl get ftj -A -w

It runs etcd, kube-apiserver, the controller manager and scheduler, the node agent (its
nodes run pods as local processes), the Kubeflow training operator, Kueue and an S3 server
(bucket ``tidetune``), then installs TideTune with ``helm`` (``--no-tidetune``: not).
``--trainer`` adds Kubeflow Trainer v2 and JobSet (TrainJobs; Kueue's TrainJob integration).
``DIR/lab.json`` says where each part is; ``DIR/logs`` holds every process's log.
Needs root and ``bash .ci/setup``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from types import FrameType

from tests.lab.cluster import Lab
from tests.lab.deploy import Stack


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.lab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dir", required=True, help="where kubeconfig, lab.json and logs/ go")
    parser.add_argument("--no-tidetune", action="store_true", help="do not install TideTune")
    parser.add_argument("--no-kueue", action="store_true", help="do not run Kueue")
    parser.add_argument(
        "--trainer", action="store_true", help="run Kubeflow Trainer v2 and JobSet (TrainJob)"
    )
    parser.add_argument(
        "--set-json",
        metavar="JSON",
        default="{}",
        help='chart values merged over the lab\'s, e.g. \'{"config": {"maxFailures": 1}}\'',
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the lab's own steps")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    try:
        values = json.loads(args.set_json)
    except ValueError as exc:
        print(f"--set-json: not JSON: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    lab = Lab(args.dir, kueue=not args.no_kueue, trainer=args.trainer)
    try:
        lab.start()
        if not args.no_tidetune:
            Stack(lab).install(values)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"lab: failed to start: {exc}", file=sys.stderr)
        lab.stop()
        return 1
    try:
        print(
            f"lab ready: api={lab.api_url} kubeconfig={lab.kubeconfig} info={lab.info_path} "
            f"startup={lab.startup_seconds}",
            flush=True,
        )
        stop.wait()
    finally:
        lab.stop()
        print("lab stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
