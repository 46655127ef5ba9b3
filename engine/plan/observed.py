"""What a run directory has already measured, in the stages' own vocabulary (`<metric>/<call>`),
summed over its metrics files: a plan for a resumed or repeated run prices with these
instead of its priors."""
from __future__ import annotations

from collections import defaultdict

from engine.plan import family


class Observed:
    def __init__(self, metrics: list[dict]):
        self.sums: dict[str, float] = defaultdict(float)  # "<metric>/<call>" -> sum over files
        self.values: dict[str, list[float]] = defaultdict(list)  # "<metric>/<family>" -> every value seen
        for figures in metrics:
            for key, value in figures.items():
                metric, sep, call = key.partition("/")
                if sep and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.sums[key] += value
                    self.values[f"{metric}/{family(call)}"].append(value)

    @classmethod
    def read(cls, run, files: list[str]) -> Observed:
        return cls([run.read_json(f, {}) for f in files] if run is not None else [])

    def family_sum(self, metric: str, call_family: str) -> float:
        return sum(self.values.get(f"{metric}/{call_family}", ()))

    def per_row(self, metric: str, call_family: str) -> float | None:
        """`metric` per row of a call family (e.g. completion tokens a reply), None if never seen."""
        rows = self.family_sum("rows", call_family)
        return self.family_sum(metric, call_family) / rows if rows else None

    def ratio(self, numerator: str, denominator: str) -> float | None:
        below = self.sums.get(denominator, 0)
        return self.sums.get(numerator, 0) / below if below else None

    def mean(self, key: str) -> float | None:
        seen = self.values.get(key)
        return sum(seen) / len(seen) if seen else None
