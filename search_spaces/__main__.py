"""Command line: sample candidates from a space, or print the canonical text of a network.

Examples::

    python -m search_spaces sample --space darts -n 3 --format json --seed 0
    python -m search_spaces sample --space nb201 -n 2 --format text
    python -m search_spaces text --space nb201 --arch "$(python -m search_spaces sample --space nb201 -n 1)"
    python -m search_spaces text --onnx model.onnx

``sample`` prints one candidate per line (``json``: the space's native string; ``nni``: the NNI
3.0 sample as JSON, NDS spaces only) or, for ``text``, each candidate's canonical text followed
by a blank line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from search_spaces import NDS_SPACES, SPACE_NAMES, InvalidGenotype, get_space


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search_spaces", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    sample = sub.add_parser("sample", help="print random candidates of a space")
    sample.add_argument("--space", required=True, choices=SPACE_NAMES)
    sample.add_argument("-n", type=int, default=1, help="number of candidates (default 1)")
    sample.add_argument("--format", choices=("json", "nni", "text"), default="json")
    sample.add_argument("--seed", type=int, default=None, help="random seed (default: fresh each run)")

    text = sub.add_parser("text", help="print the canonical text of one network")
    text.add_argument("--space", choices=SPACE_NAMES, help="space of --arch")
    text.add_argument("--arch", help="the candidate in the space's native string form ('-': read stdin)")
    text.add_argument("--onnx", metavar="PATH", help="any ONNX file, instead of --space/--arch")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits with 2 on bad usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    out = sys.stdout
    try:
        if args.command == "sample":
            if args.n < 1:
                parser.error(f"argument -n: must be at least 1, got {args.n}")
            if args.format == "nni" and args.space not in NDS_SPACES:
                parser.error(
                    f"--format nni: space {args.space!r} has no NNI form; NNI 3.0 has only {', '.join(NDS_SPACES)}"
                )
            space = get_space(args.space)
            for g in space.sample(args.n, seed=args.seed):
                if args.format == "json":
                    out.write(space.format(g) + "\n")
                elif args.format == "nni":
                    out.write(json.dumps(space.to_nni(g)) + "\n")
                else:
                    out.write(space.to_text(g) + "\n")
        else:
            from search_spaces.text import onnx_to_text

            if args.onnx:
                if args.space or args.arch:
                    parser.error("text: give either --onnx or --space with --arch, not both")
                out.write(onnx_to_text(args.onnx))
            else:
                if not (args.space and args.arch):
                    parser.error("text: needs --space and --arch (or --onnx PATH)")
                arch = sys.stdin.read().strip() if args.arch == "-" else args.arch
                space = get_space(args.space)
                out.write(space.to_text(space.parse(arch)))
    except (InvalidGenotype, ValueError) as e:
        # Bad input from the user: the message names the problem; a traceback would not help.
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
