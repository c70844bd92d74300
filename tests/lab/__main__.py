"""``python -m tests.lab --dir DIR``: bring the lab up on loopback until SIGTERM or Ctrl-C.

Prints one line containing ``ready`` when everything is up, with where to find the
kubeconfig and lab.json. Then, e.g.::

    kubectl --kubeconfig DIR/kubeconfig get ftj -A -w

It runs, on 127.0.0.1: the Kubernetes API emulator (CRDs applied), an S3 server (bucket
``tidetune``), the Kubeflow training-operator stand-in (PyTorchJobs run as local
``torchrun`` processes) and the TideTune operator (``kopf run``), restarted when it dies.
``DIR/lab.json`` says where each part is (``s3``, ``operatorPid``, ``metricsUrl``).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import threading
from types import FrameType

from tests.lab.kubeflow import KubeflowStandIn
from tests.lab.lab import Lab
from tests.lab.stack import build_lab


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.lab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dir", required=True, help="where kubeconfig, lab.json and logs/ go")
    parser.add_argument(
        "--crds",
        action="append",
        metavar="PATH",
        help="CRD file or directory to apply at start (repeatable; default: crds/)",
    )
    parser.add_argument("--no-s3", action="store_true", help="do not start the S3 server")
    parser.add_argument(
        "--no-operator",
        action="store_true",
        help="do not run the TideTune operator (run your own against the kubeconfig)",
    )
    parser.add_argument(
        "--no-kubeflow",
        action="store_true",
        help="do not run the Kubeflow training-operator stand-in",
    )
    parser.add_argument(
        "--clock-offset",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="TEST FACILITY: shift the operator's clock (pool windows) by this much",
    )
    parser.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="supervise another process, restarted when it dies (repeatable)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the lab's own steps")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    if args.no_s3 and not args.no_operator:
        print("--no-s3 needs --no-operator: the operator's jobs write to S3", file=sys.stderr)
        return 2
    if args.crds or args.no_s3:
        lab = Lab(args.dir, crds=args.crds, s3=not args.no_s3)
        if not args.no_kubeflow:
            lab.add_component(KubeflowStandIn())
    else:
        lab = build_lab(
            args.dir,
            operator=not args.no_operator,
            kubeflow=not args.no_kubeflow,
            operator_env={"TIDETUNE_CLOCK_OFFSET": str(args.clock_offset)},
        )
    for spec in args.run:
        name, sep, command = spec.partition("=")
        if not sep or not name or not command.strip():
            print(
                f"--run {spec!r}: expected NAME=COMMAND, e.g. --run sleeper='sleep 600'",
                file=sys.stderr,
            )
            return 2
        lab.add_process(name, shlex.split(command))

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        lab.start()
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"lab: failed to start: {exc}", file=sys.stderr)
        return 1
    try:
        s3 = f" s3={lab.s3.endpoint} bucket={lab.s3.bucket}" if lab.s3 else ""
        print(
            f"lab ready: api={lab.api_url} kubeconfig={lab.kubeconfig} info={lab.info_path}{s3}",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    finally:
        lab.stop()
        print("lab stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
