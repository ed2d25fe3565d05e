"""Configuration of the transaction simulator (``SimulatorConfig``): population, spending rhythm
and fraud-scenario rates, with their validation."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fraud_producers.encoding import Channel
from fraudcore.events import CurrencyCode

__all__ = ["DAY_S", "SimulatorConfig"]

#: Seconds in a simulated day.
DAY_S = 86_400


def _default_channel_weights() -> dict[Channel, float]:
    return {"pos": 0.75, "ecom": 0.2, "atm": 0.05}


class SimulatorConfig(BaseModel):
    """Population, spending behaviour and fraud-scenario rates. Defaults: the handbook's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(0, ge=0)
    currency: CurrencyCode = "EUR"

    # Population (handbook: 5,000 customers, 10,000 terminals, radius 5 on a 100 x 100 map).
    n_customers: int = Field(5_000, ge=1)
    n_terminals: int = Field(10_000, ge=1)
    map_size: float = Field(100.0, gt=0)
    radius: float = Field(5.0, gt=0)
    mean_amount: tuple[float, float] = (5.0, 100.0)
    std_ratio: float = Field(0.5, ge=0, description="std of a customer's amounts / its mean amount")
    tx_per_day: tuple[float, float] = (0.0, 4.0)
    channel_weights: dict[Channel, float] = Field(
        default_factory=_default_channel_weights,
        description="share of terminals per channel",
    )

    # Daily and weekly rhythm.
    time_of_day_mean_s: float = Field(DAY_S / 2, ge=0, le=DAY_S)
    time_of_day_std_s: float = Field(20_000.0, gt=0)
    weekend_factor: float = Field(
        0.8, ge=0, description="Sat/Sun rate relative to weekdays; the weekly volume stays the same"
    )

    # 1. Amount outliers (None: off).
    outlier_threshold: float | None = Field(220.0, gt=0)
    # 2. Compromised terminals.
    compromised_terminals_per_day: int = Field(2, ge=0)
    compromised_terminal_days: int = Field(28, ge=1)
    # 3. Compromised cards.
    compromised_cards_per_day: int = Field(3, ge=0)
    compromised_card_days: int = Field(14, ge=1)
    compromised_card_fraction: float = Field(1 / 3, ge=0, le=1)
    compromised_card_amount_factor: float = Field(5.0, gt=0)
    # 4. Card testing bursts.
    card_testing_per_day: float = Field(1.0, ge=0)
    card_testing_small_count: tuple[int, int] = (5, 15)
    card_testing_small_amount: tuple[float, float] = (0.5, 3.0)
    card_testing_span_s: tuple[float, float] = (60.0, 300.0)
    card_testing_terminals: tuple[int, int] = (1, 3)
    card_testing_cashout_delay_s: tuple[float, float] = (30.0, 600.0)
    card_testing_large_amount: tuple[float, float] = (150.0, 600.0)
    # 5. Account takeover.
    takeover_per_day: float = Field(1.0, ge=0)
    takeover_days: tuple[float, float] = (1.0, 2.0)
    takeover_tx_per_day: float = Field(4.0, gt=0)
    takeover_min_distance: float = Field(50.0, ge=0)
    takeover_terminals: tuple[int, int] = (1, 3)
    takeover_amount_factor: tuple[float, float] = (3.0, 8.0)

    @field_validator("channel_weights")
    @classmethod
    def _weights(cls, value: dict[Channel, float]) -> dict[Channel, float]:
        if any(w < 0 for w in value.values()) or sum(value.values()) <= 0:
            raise ValueError("channel weights must be >= 0 with a positive sum")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> SimulatorConfig:
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if info.annotation in (tuple[float, float], tuple[int, int]):
                lo, hi = value
                if not 0 <= lo <= hi:
                    raise ValueError(f"{name}: need 0 <= low <= high, got {value}")
        if self.card_testing_small_count[0] < 1 or self.card_testing_terminals[0] < 1:
            raise ValueError("card testing needs at least one small payment and one terminal")
        if self.takeover_terminals[0] < 1 or self.takeover_days[1] <= 0:
            raise ValueError("a takeover needs at least one terminal and a positive duration")
        return self
