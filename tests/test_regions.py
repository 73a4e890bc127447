"""Region settings: the shipped file, the seeds' values, validation, and adding a region as configuration."""

from __future__ import annotations

import re
import tomllib
from datetime import datetime, time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from models.clock import STOCKHOLM
from models.coverage import receiver_at
from models.regions import DEFAULT_FILE, UNSET_SV, Mailbox, RegionSettings, Sourced, load_regions, region

SEEDED = {"kalmar", "ostergotland", "jonkoping", "stockholm"}
# The only numbers the seed documents give for these regions (SEED-1 Kalmar, SEED-0 Östergötland, SEED-3 Inera).
SEED_NUMBERS = {"0480-840 38", "0480-44 86 00", "010-103 6000", "0771-251010"}

COVERAGE = """
[[regions.urgent_coverage]]
receiver = "support"
days = "working"
start = 07:00:00
end = 17:00:00
[[regions.urgent_coverage]]
receiver = "on_call"
days = "working"
start = 17:00:00
end = 07:00:00
[[regions.urgent_coverage]]
receiver = "on_call"
days = "non_working"
start = 00:00:00
end = 00:00:00
"""
FIFTH = """
[[regions]]
code = "uppsala"
name = "Region Uppsala"
support_phone = {value = "018-611 00 00", source = "Region Uppsala, beslut 2027-01-10"}
postal_route = {value = ["Servicedesk", "Uppsala"], source = "Region Uppsala, beslut 2027-01-10"}
on_call_email = {demo = "beredskap@uppsala.invalid"}
escalation_email = {demo = "eskalering@uppsala.invalid"}
support_queue_email = {demo = "support@uppsala.invalid"}
""" + COVERAGE

WINDOWS = [{"receiver": "on_call", "days": "every", "start": time(0), "end": time(0)}]
VALID: dict[str, Any] = {
    "code": "gotland", "name": "Region Gotland", "support_phone": {"value": "0498-26 90 00", "source": "beslut"},
    "postal_route": {"value": ["Visby"], "source": "beslut"}, "on_call_email": {"demo": "a@gotland.invalid"},
    "escalation_email": {"demo": "b@gotland.invalid"}, "support_queue_email": {"demo": "c@gotland.invalid"},
    "urgent_coverage": WINDOWS,
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
    assert (kalmar.support_phone.shown, kalmar.support_option.shown) == ("0480-840 38", "knappval 2")
    assert kalmar.postal_route.shown == ["Regionstab Kansli", "Strömgatan", "Kalmar"]
    assert kalmar.advice_phone.shown == "0480-44 86 00"
    assert kalmar.on_call_hours == "17:00–07:00"
    assert not kalmar.urgent_line_always_open
    assert (kalmar.promised_callback_minutes, kalmar.callback_deadline_minutes) == (30, 30)
    for name in ("support_phone", "support_option", "postal_route", "advice_phone", "callback_minutes"):
        assert str(getattr(kalmar, name).source).startswith("SEED-1"), name


def test_ostergotland_answers_urgent_calls_around_the_clock_and_promises_no_callback() -> None:
    ostergotland = region("ostergotland")
    assert ostergotland.support_phone.shown == "010-103 6000"
    assert str(ostergotland.support_phone.source).startswith("SEED-0")
    assert ostergotland.urgent_line_always_open and ostergotland.on_call_hours == "dygnet runt"
    assert ostergotland.makes_no_callback_promise and ostergotland.promised_callback_minutes is None
    # The callback clock still runs (escalation), on the system's own response time, not a promise.
    assert ostergotland.callback_deadline_minutes == ostergotland.response_minutes == 30
    weekday_noon = datetime(2026, 11, 2, 12, 0, tzinfo=STOCKHOLM)
    assert receiver_at(weekday_noon, ostergotland.urgent_coverage) == "on_call"
    assert receiver_at(weekday_noon, region("kalmar").urgent_coverage) == "support"


@pytest.mark.parametrize("code", ["jonkoping", "stockholm"])
def test_what_the_seeds_do_not_give_is_unset(code: str) -> None:
    r = region(code)
    assert r.support_phone.shown is None and r.postal_route.shown is None
    assert r.callback_minutes.shown is None and r.promised_callback_minutes is None
    assert r.on_call_hours is None  # routing windows without a source: hours not shown
    assert {"support_phone", "postal_route", "callback_minutes", "urgent_coverage (on-call hours)"} <= set(r.unset())


def test_stockholm_advice_line_is_ineras_from_seed_3() -> None:
    advice = region("stockholm").advice_phone
    assert advice.shown == "0771-251010" and str(advice.source).startswith("SEED-3")


def test_only_the_seeds_numbers_are_in_the_file() -> None:
    text = DEFAULT_FILE.read_text(encoding="utf-8")
    numbers = set(re.findall(r'value = "(\+?[0-9][0-9 -]*[0-9])"', text))
    assert numbers == SEED_NUMBERS
    assert "070-174" not in text  # the old invented numbers


def test_every_shown_value_carries_a_source_that_quotes_it() -> None:
    for r in load_regions().values():
        for name in ("support_phone", "advice_phone"):
            v = getattr(r, name)
            if v.is_set:
                digits = re.sub(r"[^0-9]", "", v.value)
                assert digits in re.sub(r"[^0-9]", "", v.source), (r.code, name)
        if r.postal_route.is_set:
            assert all(line in str(r.postal_route.source) for line in r.postal_route.value), r.code


def test_shipped_mailboxes_are_unset_and_only_the_demo_reaches_its_stand_ins() -> None:
    for r in load_regions().values():
        for name in ("on_call_email", "escalation_email", "support_queue_email"):
            box: Mailbox = getattr(r, name)
            assert not box.is_set, (r.code, name)
            assert box.address(demo=False) is None
            assert str(box.address(demo=True)).endswith(".invalid"), (r.code, name)


def test_a_sourced_mailbox_wins_over_the_demo_stand_in() -> None:
    box = Mailbox.model_validate({"value": "beredskap@region.se", "source": "beslut", "demo": "b@x.invalid"})
    assert box.address(demo=True) == box.address(demo=False) == "beredskap@region.se"


def test_a_demo_mailbox_must_reach_nobody() -> None:
    with pytest.raises(ValidationError, match=".invalid"):
        Mailbox.model_validate({"demo": "beredskap@regionkalmar.se"})


@pytest.mark.parametrize("written", ['"018-611 00 00"', '{value = "018-611 00 00"}',
                                     '{value = "018-611 00 00", source = "  "}'])
def test_a_value_without_a_source_is_unset_and_reported(tmp_path: Path, written: str) -> None:
    path = tmp_path / "regions.toml"
    path.write_text(FIFTH.replace('support_phone = {value = "018-611 00 00", source = "Region Uppsala, beslut '
                                  '2027-01-10"}', f"support_phone = {written}"), encoding="utf-8")
    if "source" in written:  # an empty source is an error, not silently unset
        with pytest.raises(ValueError, match="support_phone"):
            load_regions(path)
        return
    uppsala = load_regions(path)["uppsala"]
    assert uppsala.support_phone.shown is None and "support_phone" in uppsala.unset()
    assert uppsala.unsourced() == ["support_phone"]


def test_the_unset_text_is_the_one_people_see() -> None:
    assert UNSET_SV == "Ej inställt – kontakta regionens 1177-förvaltning"
    assert not Sourced[str]().is_set


def test_unknown_region_is_a_clear_key_error() -> None:
    with pytest.raises(KeyError, match=r"unknown region 'narnia'.*kalmar"):
        region("narnia")


def test_a_fifth_region_is_only_configuration(tmp_path: Path) -> None:
    path = tmp_path / "regions.toml"
    path.write_text(DEFAULT_FILE.read_text(encoding="utf-8") + FIFTH, encoding="utf-8")
    regions = load_regions(path)
    assert set(regions) == SEEDED | {"uppsala"}
    uppsala = regions["uppsala"]
    # Settings left out take the defaults; contact values left out are unset.
    assert (uppsala.review_interval_days, uppsala.callback_deadline_minutes) == (365, 30)
    assert uppsala.promised_callback_minutes is None
    assert uppsala.hours.office_end == time(16, 30)
    assert uppsala.support_option.shown is None and uppsala.advice_phone.shown is None
    assert uppsala.support_phone.shown == "018-611 00 00"


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
    body, coverage = FIFTH.split("[[regions.urgent_coverage]]", 1)
    path.write_text(body + "[regions.hours]\noffice_start = 07:30:00\n[[regions.urgent_coverage]]" + coverage,
                    encoding="utf-8")
    uppsala = load_regions(path)["uppsala"]
    assert uppsala.hours.office_start == time(7, 30)
    assert uppsala.urgent_coverage[1].end == time(7, 0)


@pytest.mark.parametrize(("change", "problem"), [
    ({"code": "Gotland"}, "code"),
    ({"code": "1gotland"}, "code"),
    ({"code": "got-land"}, "code"),
    ({"support_phone": {"value": "", "source": "x"}}, "support_phone"),
    ({"support_phone": {"value": "   ", "source": "x"}}, "support_phone"),
    ({"support_phone": {"value": "ring oss", "source": "x"}}, "support_phone"),
    ({"support_phone": {"value": "0498-26 90 00", "source": "x", "note": "y"}}, "support_phone"),
    ({"name": ""}, "name"),
    ({"postal_route": {"value": [], "source": "x"}}, "postal_route"),
    ({"on_call_email": {"value": "beredskap", "source": "x"}}, "on_call_email"),
    ({"review_interval_days": 0}, "review_interval_days"),
    ({"callback_minutes": {"value": -5, "source": "x"}}, "callback_minutes"),
    ({"callback_minutes": {"value": "never", "source": "x"}}, "callback_minutes"),
    ({"response_minutes": 0}, "response_minutes"),
    ({"hours": {"office_start": time(17, 0), "office_end": time(8, 0)}}, "office_start"),
    ({"hours": {"on_call_start": time(17, 0)}}, "on_call_start"),  # on call is urgent_coverage now
    ({"urgent_coverage": []}, "urgent_coverage"),
    ({"urgent_coverage": [{"receiver": "on_call", "days": "working", "start": time(0), "end": time(0)}]},
     "no receiver of urgent orders on non-working days"),
    ({"support_phon": {"value": "010-103 6000", "source": "x"}}, "support_phon"),  # a misspelt key is an error
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
