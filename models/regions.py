"""Per-region settings, read from a TOML file so that adding a region is configuration, not code.

The file is `models/regions.toml` unless the environment variable REGIONS_FILE names another one.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from models.calendar import WorkingHours

DEFAULT_FILE = Path(__file__).with_name("regions.toml")

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
# Digits with the spaces and hyphens Swedish numbers are written with ("010-103 6000", "0480-840 38").
Phone = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^\+?[0-9][0-9 -]*[0-9]$")]
Email = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]


class RegionSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    code: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")]
    name: Text
    support_phone: Phone
    support_option: Text | None = None
    hours: WorkingHours = WorkingHours()
    postal_route: list[Text] = Field(min_length=1)
    advice_phone: Phone | None = None
    on_call_email: Email
    escalation_email: Email
    support_queue_email: Email
    review_interval_days: int = Field(default=365, gt=0)
    callback_minutes: int = Field(default=30, gt=0)


class Regions(BaseModel):
    """The whole file: `[[regions]]` tables, one per region."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    regions: list[RegionSettings] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_codes(self) -> Regions:
        codes = [r.code for r in self.regions]
        duplicates = sorted({c for c in codes if codes.count(c) > 1})
        if duplicates:
            raise ValueError(f"region codes appear more than once: {', '.join(duplicates)}")
        return self

    def by_code(self) -> dict[str, RegionSettings]:
        return {r.code: r for r in self.regions}


def _configured_path(path: Path | None) -> Path:
    if path is not None:
        return path
    env = os.environ.get("REGIONS_FILE")
    return Path(env) if env else DEFAULT_FILE


@lru_cache(maxsize=8)
def _load(path: Path) -> dict[str, RegionSettings]:
    with path.open("rb") as f:
        data = tomllib.load(f)
    try:
        return Regions.model_validate(data).by_code()
    except ValidationError as exc:
        raise ValueError(f"invalid region settings in {path}:\n{exc}") from exc


def load_regions(path: Path | None = None) -> dict[str, RegionSettings]:
    """Regions by code, from `path`, else $REGIONS_FILE, else models/regions.toml (each file read once)."""
    # A copy, so a caller that edits the dict cannot change what everyone else sees.
    return dict(_load(_configured_path(path).resolve()))


def region(code: str) -> RegionSettings:
    regions = load_regions()
    try:
        return regions[code]
    except KeyError:
        raise KeyError(
            f"unknown region {code!r}; configured in {_configured_path(None)}: {', '.join(sorted(regions))}"
        ) from None
