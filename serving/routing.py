"""Who answers a request: routing policies, kept apart from the model that scores.

`SingleRouting` sends every row to the champion. `CanaryRouting` sends `percent`% of units to
the challenger, by a stable hash of the row's unit id (the same unit always meets the same model,
which keeps an online comparison valid) or, for rows without one, of the request id, salted by
the rollout (model and challenger version).
`ShadowRouting` answers every row with the champion and mirrors `percent`% of requests to the
challenger off the response path. `EpsilonGreedy` turns a CATE into an action for exploration.
"""

import hashlib
import secrets
from dataclasses import dataclass

import numpy as np

CHAMPION, CHALLENGER, SHADOW = "champion", "challenger", "shadow"
MODES = ("single", "canary", "shadow")


def bucket(key: str) -> float:
    """A stable uniform number in [0, 1) for a key (the same on every server and restart)."""
    return int.from_bytes(hashlib.sha256(str(key).encode()).digest()[:8], "big") / 2.0**64


@dataclass(frozen=True)
class SingleRouting:
    mode = "single"
    percent: float = 0.0

    def assign(self, unit_ids: list, request_id: str) -> list[str]:
        return [CHAMPION] * len(unit_ids)

    def mirror(self, request_id: str) -> bool:
        return False


@dataclass(frozen=True)
class CanaryRouting:
    """`salt` names the rollout (the server passes model and challenger version): a unit meets the
    same version throughout one rollout, but each rollout draws its own units, so the same 10% do
    not carry every challenger's risk and bring their exposure to the last one into the next test."""
    percent: float
    salt: str = ""
    mode = "canary"

    def __post_init__(self):
        if not 0 <= self.percent <= 100:
            raise ValueError(f"canary percent must be in [0, 100], got {self.percent}")

    def assign(self, unit_ids: list, request_id: str) -> list[str]:
        share = self.percent / 100
        return [CHALLENGER if bucket(f"canary:{self.salt}:{u if u is not None else request_id}") < share else CHAMPION
                for u in unit_ids]

    def mirror(self, request_id: str) -> bool:
        return False


DEFAULT_SHADOW_TIMEOUT = 2.0  # seconds a shadow answer may take before it is logged as timed out


@dataclass(frozen=True)
class ShadowRouting:
    percent: float = 100.0
    timeout_seconds: float = DEFAULT_SHADOW_TIMEOUT
    mode = "shadow"

    def __post_init__(self):
        if not 0 <= self.percent <= 100:
            raise ValueError(f"shadow percent must be in [0, 100], got {self.percent}")
        if not self.timeout_seconds > 0:  # else every shadow answer times out: a shadow that judges nothing
            raise ValueError(f"shadow timeout must be a positive number of seconds, got {self.timeout_seconds}")

    def assign(self, unit_ids: list, request_id: str) -> list[str]:
        return [CHAMPION] * len(unit_ids)

    def mirror(self, request_id: str) -> bool:
        return bucket("shadow:" + request_id) < self.percent / 100


def make_routing(mode: str, percent: float | None = None, timeout_seconds: float | None = None, rollout: str = ""):
    """`rollout` salts the canary's split (`CanaryRouting.salt`); None: the mode's default."""
    if mode == "single":
        return SingleRouting()
    if mode == "canary":
        return CanaryRouting(10.0 if percent is None else percent, rollout)
    if mode == "shadow":
        return ShadowRouting(100.0 if percent is None else percent,
                             DEFAULT_SHADOW_TIMEOUT if timeout_seconds is None else timeout_seconds)
    raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


@dataclass(frozen=True)
class EpsilonGreedy:
    """Recommend treating (action 1) where the CATE exceeds `threshold`; with probability
    `epsilon` draw the action uniformly instead. Each request's draw comes from a fresh seed of the
    server's own (`new_seed`), logged beside the decision so that it can be replayed; a client
    cannot choose or predict it (a client-chosen draw would bias the logged propensities)."""

    epsilon: float
    threshold: float = 0.0

    def __post_init__(self):
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"explore epsilon must be in [0, 1], got {self.epsilon}")

    @staticmethod
    def new_seed() -> int:
        return secrets.randbits(63)

    def decide(self, cate: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(recommended, drawn action, propensity of the drawn action) per row."""
        recommended = (cate > self.threshold).astype(np.int64)
        rng = np.random.default_rng(seed)
        explore = rng.random(len(cate)) < self.epsilon
        drawn = np.where(explore, rng.integers(0, 2, len(cate)), recommended)
        propensity = np.where(drawn == recommended, 1 - self.epsilon / 2, self.epsilon / 2)
        return recommended, drawn, propensity
