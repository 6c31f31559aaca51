"""A memory balloon: holds anonymous memory so that the machine's MemAvailable stays near a
target, to see whether memory pressure alone slows a run (issue 26: the 4 GB
``bench/delta.py`` run had ~1 GB available while a replica read its base).

Run: ``.venv/bin/python bench/balloon.py --target-gb 2.75 --floor-gb 2 --seconds 240``
beside the run (under the same bench lock hold). Every 0.1 s it reads MemAvailable and
grows by 64 MiB pieces (each written, so its pages are resident: no swap here, so the kernel
cannot take them back, only the page cache) while MemAvailable is above the target + 0.25 GB,
and gives pieces back while it is below the target - 0.25 GB; below ``--floor-gb`` it gives
back half of what it holds at once (other processes on the machine come first). It prints
what it held and the lowest MemAvailable every 10 s.
"""

from __future__ import annotations

import argparse
import signal
import time

from delta_pressure import mem_available

PIECE = 64 * 1024 * 1024
GB = 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-gb", type=float, default=2.75)
    parser.add_argument("--floor-gb", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=240.0)
    args = parser.parse_args()
    target, floor = args.target_gb * GB, args.floor_gb * GB
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    held: list[bytes] = []
    end = time.monotonic() + args.seconds
    next_report, lowest = time.monotonic() + 10, float("inf")
    while not stop[0] and time.monotonic() < end:
        available = mem_available()
        lowest = min(lowest, available)
        if available < floor:
            del held[: max(1, len(held) // 2)]
        elif available < target - 0.25 * GB and held:
            held.pop()
        elif available > target + 0.25 * GB:
            held.append(b"\x01" * PIECE)  # written: resident
            continue  # grow again at once while far above
        if time.monotonic() >= next_report:
            print(
                f"balloon: holds {len(held) * PIECE / GB:.2f} GB, MemAvailable lowest "
                f"{lowest / GB:.2f} GB",
                flush=True,
            )
            next_report, lowest = time.monotonic() + 10, float("inf")
        time.sleep(0.1)
    held.clear()


if __name__ == "__main__":
    main()
