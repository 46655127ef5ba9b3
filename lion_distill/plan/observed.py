"""What a run directory has already measured, in the stages' own vocabulary (`<metric>/<call>`),
summed over its metrics files: a plan for a resumed or repeated run prices with these
instead of its priors."""

from __future__ import annotations

from collections import defaultdict

from lion_distill.plan import family


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


class Estimates:
    """What a job's plan assumes per call: the figure the run directory measured, else the
    config's `plan` prior; each assumption is stated once in `assumptions`."""

    def __init__(self, seen: Observed, priors, assumptions: list[str] | None = None):
        self.seen, self.priors, self.assumptions = seen, priors, list(assumptions or ())

    def note(self, assumption: str) -> None:
        if assumption not in self.assumptions:  # a role asked in every iteration is stated once
            self.assumptions.append(assumption)

    def reply_tokens(self, role, role_name: str, call: str) -> tuple[float, str]:
        """-> (completion tokens a reply of `call`, where that figure comes from)."""
        observed = self.seen.per_row("completion_tokens", call)
        if observed is not None:
            self.note(f"{role_name}: {observed:.1f} completion tokens a reply, observed in {call}")
            return observed, "observed replies"
        frac = self.priors.completion_fraction
        self.note(f"{role_name}: {frac:g} x max_tokens ({role.sampling.max_tokens}) completion tokens a reply")
        return role.sampling.max_tokens * frac, "max_tokens" if frac == 1 else f"{frac:g} x max_tokens"

    def share(self, numerator: str, denominator: str, prior: float, what: str) -> float:
        observed = self.seen.ratio(numerator, denominator)
        share, how = (observed, "observed") if observed is not None else (prior, "plan prior")
        self.note(f"{share:.1%} of {what} ({how})")
        return share

    def throughput(self, role_name: str, call: str) -> float | None:
        """Generated tokens/s a GPU for a local role: measured for the call's family, else the prior."""
        return self.seen.mean(f"tokens_per_s_per_gpu/{family(call)}") or self.priors.tokens_per_s_per_gpu.get(role_name)
