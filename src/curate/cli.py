"""One console script: ``curate <stage>``; bad input exits 2 with one line, no traceback."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Sequence

import curate.stages
from curate.stage import guarded

# Every module in curate/stages is a stage: adding a file adds a command.
STAGES = tuple(sorted(m.name for m in pkgutil.iter_modules(curate.stages.__path__)))
COMMANDS = {stage: f"curate.stages.{stage}" for stage in STAGES} | {
    "compare": "curate.people.compare",
    "deps": "curate.people.deps",
    "exps": "curate.people.exps",
    "pack": "curate.people.pack",
    "review": "curate.people.review",
    "trace": "curate.people.trace",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        usage = f"usage: curate {{{','.join(COMMANDS)}}} ...  (curate COMMAND --help for its options)"
        if argv and argv[0] not in {"-h", "--help"}:
            print(f"{usage}\ncurate: error: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        print(usage)
        return 0 if argv else 2
    module = importlib.import_module(COMMANDS[argv[0]])
    return guarded(module.main, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
