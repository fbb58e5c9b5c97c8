"""The engine benchmark, also available as ``parley bench engines``.

python benchmarks/bench_engines.py [--config FILE] [--set KEY=VALUE] [--clips DIR] [--json OUT]
"""

import sys

from parley.bench.engines import main

if __name__ == "__main__":
    sys.exit(main())
