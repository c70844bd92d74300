"""``python -m tests.lab --dir DIR``: bring the lab up on loopback until SIGTERM or Ctrl-C.

Prints one line containing ``ready`` when everything is up, with where to find the
kubeconfig and lab.json. Then, e.g.::

    kubectl --kubeconfig DIR/kubeconfig apply --validate=false -f crds/ -f examples/quickstart.yaml
    kubectl --kubeconfig DIR/kubeconfig get ftj -w
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import threading
from types import FrameType

from tests.lab.lab import Lab


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
        "--operator",
        nargs="?",
        const="tidetune_operator",
        metavar="MODULE",
        help="run `kopf run -A --standalone -m MODULE` supervised (default module:"
        " tidetune_operator)",
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
    lab = Lab(args.dir, crds=args.crds, s3=not args.no_s3)
    for spec in args.run:
        name, sep, command = spec.partition("=")
        if not sep or not name or not command.strip():
            print(
                f"--run {spec!r}: expected NAME=COMMAND, e.g. --run sleeper='sleep 600'",
                file=sys.stderr,
            )
            return 2
        lab.add_process(name, shlex.split(command))
    if args.operator:
        lab.add_operator(args.operator)

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
