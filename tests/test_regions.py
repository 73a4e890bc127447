"""Region settings: the shipped file, the seeds' values, validation, and adding a region as configuration."""

from __future__ import annotations

import tomllib
from datetime import datetime, time
from pathlib import Path
from typing import Any

import pytest

from models.calendar import is_on_call
from models.clock import STOCKHOLM
from models.regions import DEFAULT_FILE, RegionSettings, load_regions, region

SEEDED = {"kalmar", "ostergotland", "jonkoping", "stockholm"}

FIFTH = """
[[regions]]
code = "uppsala"
name = "Region Uppsala"
support_phone = "070-174 06 30"
postal_route = ["Servicedesk", "Uppsala"]
on_call_email = "beredskap@uppsala.invalid"
escalation_email = "eskalering@uppsala.invalid"
support_queue_email = "support@uppsala.invalid"
"""

VALID: dict[str, Any] = {
    "code": "gotland", "name": "Region Gotland", "support_phone": "070-174 06 40",
    "postal_route": ["Visby"], "on_call_email": "a@gotland.invalid",
    "escalation_email": "b@gotland.invalid", "support_queue_email": "c@gotland.invalid",
}


@pytest.fixture(autouse=True)
def _default_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGIONS_FILE", raising=False)


def test_the_shipped_file_has_the_four_seeded_regions() -> None:
    regions = load_regions()
    assert set(regions) == SEEDED
    assert all(code == r.code for code, r in regions.items())


def test_kalmar_values_come_from_the_seed() -> None:
    kalmar = region("kalmar")
    assert kalmar.name == "Region Kalmar län"
    assert (kalmar.support_phone, kalmar.support_option) == ("0480-840 38", "knappval 2")
    assert kalmar.postal_route == ["Regionstab Kansli", "Strömgatan", "Kalmar"]
    assert kalmar.advice_phone == "0480-44 86 00"
    assert (kalmar.hours.on_call_start, kalmar.hours.on_call_end) == (time(17, 0), time(7, 0))
    assert not kalmar.hours.urgent_line_always_open
    assert kalmar.callback_minutes == 30


def test_ostergotland_answers_urgent_calls_around_the_clock() -> None:
    ostergotland = region("ostergotland")
    assert ostergotland.support_phone == "010-103 6000"
    assert ostergotland.hours.urgent_line_always_open
    weekday_noon = datetime(2026, 11, 2, 12, 0, tzinfo=STOCKHOLM)
    assert is_on_call(weekday_noon, ostergotland.hours)
    assert not is_on_call(weekday_noon, region("kalmar").hours)


def test_shipped_addresses_cannot_reach_anyone() -> None:
    for r in load_regions().values():
        for address in (r.on_call_email, r.escalation_email, r.support_queue_email):
            assert address.endswith(".invalid"), (r.code, address)


def test_every_placeholder_is_marked_in_the_file() -> None:
    text = DEFAULT_FILE.read_text(encoding="utf-8")
    assert "# not in the seeds: placeholder" in text
    # Every seed-less value in Stockholm's entry is a placeholder, so each of its value lines says so.
    stockholm = text.split('code = "stockholm"', 1)[1]
    values = [line for line in stockholm.splitlines()
              if "=" in line and not line.lstrip().startswith(("#", "name", "urgent_line"))]
    assert values and all("placeholder" in line for line in values), values


def test_unknown_region_is_a_clear_key_error() -> None:
    with pytest.raises(KeyError, match=r"unknown region 'narnia'.*kalmar"):
        region("narnia")


def test_a_fifth_region_is_only_configuration(tmp_path: Path) -> None:
    path = tmp_path / "regions.toml"
    path.write_text(DEFAULT_FILE.read_text(encoding="utf-8") + FIFTH, encoding="utf-8")
    regions = load_regions(path)
    assert set(regions) == SEEDED | {"uppsala"}
    uppsala = regions["uppsala"]
    # Settings left out take the defaults.
    assert (uppsala.review_interval_days, uppsala.callback_minutes) == (365, 30)
    assert uppsala.hours.office_end == time(16, 30)
    assert uppsala.support_option is None and uppsala.advice_phone is None


def test_regions_file_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "only-uppsala.toml"
    path.write_text(FIFTH, encoding="utf-8")
    monkeypatch.setenv("REGIONS_FILE", str(path))
    assert set(load_regions()) == {"uppsala"}
    assert region("uppsala").name == "Region Uppsala"
    with pytest.raises(KeyError, match="only-uppsala.toml"):
        region("kalmar")


def test_loaded_once_and_callers_cannot_change_it() -> None:
    first = load_regions()
    first.pop("kalmar")
    assert "kalmar" in load_regions()
    assert region("kalmar") is region("kalmar")


def test_times_are_read_from_toml_time_literals(tmp_path: Path) -> None:
    path = tmp_path / "regions.toml"
    path.write_text(FIFTH + "[regions.hours]\noffice_start = 07:30:00\non_call_end = 07:30:00\n", encoding="utf-8")
    hours = load_regions(path)["uppsala"].hours
    assert (hours.office_start, hours.on_call_end) == (time(7, 30), time(7, 30))


@pytest.mark.parametrize(("change", "problem"), [
    ({"code": "Gotland"}, "code"),
    ({"code": "1gotland"}, "code"),
    ({"code": "got-land"}, "code"),
    ({"support_phone": ""}, "support_phone"),
    ({"support_phone": "   "}, "support_phone"),
    ({"support_phone": "ring oss"}, "support_phone"),
    ({"name": ""}, "name"),
    ({"postal_route": []}, "postal_route"),
    ({"on_call_email": "beredskap"}, "on_call_email"),
    ({"review_interval_days": 0}, "review_interval_days"),
    ({"callback_minutes": -5}, "callback_minutes"),
    ({"hours": {"office_start": time(17, 0), "office_end": time(8, 0)}}, "office_start"),
    ({"hours": {"on_call_start": time(12, 0)}}, "overlaps office hours"),
    ({"support_phon": "010-103 6000"}, "support_phon"),  # a misspelt key is an error, not ignored
])
def test_invalid_settings_are_refused(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        RegionSettings.model_validate(VALID | change)


def test_a_broken_file_names_itself(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(FIFTH.replace('code = "uppsala"', 'code = "Uppsala"'), encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.toml(.|\n)*code"):
        load_regions(path)


def test_duplicate_codes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.toml"
    path.write_text(FIFTH + FIFTH, encoding="utf-8")
    with pytest.raises(ValueError, match="more than once: uppsala"):
        load_regions(path)


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="regions"):
        load_regions(path)


def test_the_shipped_file_is_plain_toml() -> None:
    with DEFAULT_FILE.open("rb") as f:
        assert len(tomllib.load(f)["regions"]) == len(SEEDED)
