"""One valgrind run of the benchmark: `python -m bench.count <shape> <variant> <requests>` sets the
variant up, warms it with 5 requests, then serves `requests` more. bench/run.py runs it twice under
callgrind (20 and 220 requests) and takes the difference over 200: instructions per request,
without the interpreter's startup and imports.
"""

from __future__ import annotations

import sys

from bench.worker import one_round, set_variant


def main() -> None:
    shape, variant, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
    set_variant(variant)
    one_round(shape, 5)
    one_round(shape, requests)


if __name__ == "__main__":
    main()
