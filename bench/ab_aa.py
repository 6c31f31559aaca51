"""A/A and A/B streams through the served-quality promotion rule, looked at as the server does
(every check, as labels arrive): how often it decides when both arms are the same model (a
false promotion or rollback), and how many labelled rows it needs when one is better.

Run: ``.venv/bin/python bench/ab_aa.py [--streams 1000] [--max-rows 10000] [--every 50]``

Per-row losses are log losses of a binary model, as the join scores them: a true probability
``q ~ U(0.02, 0.98)`` per row, the label ``y ~ Bernoulli(q)``, and the served probability
``p``: ``q`` itself for a calibrated model, ``0.5 + 0.6 (q - 0.5)`` for a blurred one (worse
by about 0.04 nats a row). A/A: both arms serve the calibrated model. A/B: the candidate is
the calibrated model and live the blurred one (a better candidate), then the other way round.
Each stream is looked at every ``--every`` labelled rows per arm from ``--min-rows`` on, up to
``--max-rows``; the first look that decides ends it. Each rule is
:func:`streamtrain.quality.promotion.decide`, as the server calls it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from streamtrain.quality.promotion import ArmLoss, PromotionRule, decide

RULES = {
    "welch z=3": PromotionRule(0, test="welch", z=3.0),
    "welch z=2": PromotionRule(0, test="welch", z=2.0),
    "msprt a=0.01": PromotionRule(0, test="msprt", alpha=0.01),
    "msprt a=0.05": PromotionRule(0, test="msprt", alpha=0.05),
}


def losses(rng: np.random.Generator, streams: int, rows: int, blurred: bool) -> np.ndarray:
    q = rng.uniform(0.02, 0.98, (streams, rows))
    y = rng.random((streams, rows)) < q
    p = 0.5 + 0.6 * (q - 0.5) if blurred else q
    return np.where(y, -np.log(p), -np.log1p(-p))


def first_decisions(
    rule: PromotionRule, live: np.ndarray, cand: np.ndarray, looks: list[int]
) -> list[tuple[str | None, int]]:
    """Per stream: the first decision over ``looks`` (rows per arm) and the rows it took."""
    sums = [np.cumsum(a, axis=1) for a in (live, cand)]
    squares = [np.cumsum(a * a, axis=1) for a in (live, cand)]
    out: list[tuple[str | None, int]] = []
    for s in range(live.shape[0]):
        found: tuple[str | None, int] = (None, looks[-1])
        for n in looks:
            arms = [
                ArmLoss(n, float(sums[i][s, n - 1]), float(squares[i][s, n - 1])) for i in (0, 1)
            ]
            verdict = decide(rule, arms[0], arms[1])
            if verdict.decision is not None:
                found = (verdict.decision, n)
                break
        out.append(found)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--max-rows", type=int, default=10_000)
    parser.add_argument("--min-rows", type=int, default=150)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    looks = list(range(args.min_rows, args.max_rows + 1, args.every))
    print(
        f"{args.streams} streams per case, looks every {args.every} rows per arm from "
        f"{args.min_rows} to {args.max_rows} ({len(looks)} looks)"
    )
    cases = {
        "A/A": (False, False),
        "better candidate": (True, False),
        "worse candidate": (False, True),
    }
    for case, (live_blurred, cand_blurred) in cases.items():
        print(f"\n{case}:")
        for name, rule in RULES.items():
            started = time.perf_counter()
            decided: list[tuple[str | None, int]] = []
            rng = np.random.default_rng(args.seed)
            for chunk in range(0, args.streams, 100):
                count = min(100, args.streams - chunk)
                live = losses(rng, count, args.max_rows, live_blurred)
                cand = losses(rng, count, args.max_rows, cand_blurred)
                decided += first_decisions(rule, live, cand, looks)
            promoted = sum(d == "promote" for d, _ in decided) / len(decided)
            rolled = sum(d == "rollback" for d, _ in decided) / len(decided)
            rows = sorted(n for d, n in decided if d is not None)
            median = rows[len(rows) // 2] if rows else float("nan")
            print(
                f"  {name:13s} promote {promoted:6.1%}  rollback {rolled:6.1%}  "
                f"undecided {1 - promoted - rolled:6.1%}  median rows to decide {median}  "
                f"({time.perf_counter() - started:.0f} s)"
            )


if __name__ == "__main__":
    main()
