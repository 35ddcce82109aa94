"""Run a command; print its wall time and the peak RSS of it and its children as JSON.

    python -m bench.rss CMD [ARGS...]

This wrapper is a small process, so the children's ru_maxrss (which a child inherits across fork+exec)
starts from its own few MiB, not from a large parent's.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def main() -> int:
    t = time.perf_counter()
    done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        return done.returncode
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
