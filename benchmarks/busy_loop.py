"""A background process for benchmarks: busy for BUSY seconds, asleep for IDLE seconds, forever.

``python benchmarks/busy_loop.py 0.03 0.07 &`` uses 30 % of one core at normal priority, as
another program on the machine would (ray_overhead's runs beside it: benchmarks/README.md).
"""

import sys
import time

busy_s, idle_s = float(sys.argv[1]), float(sys.argv[2])
while True:
    started = time.perf_counter()
    while time.perf_counter() - started < busy_s:
        pass
    time.sleep(idle_s)
