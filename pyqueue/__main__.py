"""Command line: ``python -m pyqueue COMMAND``, one of the ``commands`` below."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = (
        "demo",
        "coordinator",
        "node",
        "status",
        "purge",
        "queue",
        "schedules",
        "http-token",
    )
    if not argv or argv[0] not in commands:
        parser = argparse.ArgumentParser(prog="pyqueue")
        parser.add_argument("command", choices=commands)
        parser.print_help() if not argv else parser.parse_args(argv[:1])
        return 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        parser = argparse.ArgumentParser(prog="pyqueue demo", description="run the demo pipeline")
        parser.add_argument("--samples", type=int, default=4_000_000)
        parser.add_argument("--blocks", type=int, default=2000)
        parser.add_argument("--records", type=int, default=200_000)
        parser.add_argument(
            "--cluster-tasks",
            type=int,
            default=24,
            help="pure-Python tasks for the LocalCluster stage (0 skips it)",
        )
        args = parser.parse_args(rest)
        from pyqueue import _demo

        _demo.run(
            samples=args.samples,
            blocks=args.blocks,
            records=args.records,
            cluster_tasks=args.cluster_tasks,
        )
        return 0
    from pyqueue.cluster import cli

    handler: Callable[[list[str]], int] = getattr(cli, f"main_{command.replace('-', '_')}")
    return handler(rest)


if __name__ == "__main__":
    sys.exit(main())
