"""Normal waits at INFO, failures at ERROR, in Prefect's flow-run logs.

Prefect's async flow engine (`prefect/flow_engine.py`, `AsyncFlowRunEngine.initialize_run`) ends every run
segment with `Finished in state ...`, logged at INFO when the state is Completed and at ERROR otherwise, so
each suspension for a human decision logs `ERROR ... Finished in state Suspended(type=PAUSED)` (the sync
engine logs INFO whatever the state). That line goes to the process's handlers and, through Prefect's
`APILogHandler`, to the run's logs in the UI: log-based alerting would page on routine work.

`SuspensionsAtInfo` sits on the `prefect.flow_runs` logger, where the engine's record is made (a logger's
filters run before any of its handlers, the API handler included), and lowers only that line, by the state
type it names: a PAUSED state (suspended or paused for input) and CANCELLED (an order cancelled by a person)
become INFO, a SCHEDULED one (AwaitingRetry: a retry follows) WARNING. Failed and Crashed stay ERROR, and
every other record passes untouched.

Install it in each process that executes flow runs: `install()` (after Prefect has configured logging,
i.e. after `import prefect`), or through Prefect's logging settings file (PREFECT_LOGGING_SETTINGS_PATH)
with `add_to_logging_config(config)`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

FLOW_RUN_LOGGER = "prefect.flow_runs"
# `str(state)`: `Name('message', type=TYPE)`, where `type=` is left out when the name is the type's own.
_FINISHED = re.compile(r"^Finished in state (?P<name>\w+)\((?P<display>.*)\)$", re.DOTALL)
_TYPE = re.compile(r"(?:^|, )type=(?P<type>[A-Z]+)$")
LEVEL_FOR_STATE_TYPE = {"PAUSED": logging.INFO, "CANCELLED": logging.INFO, "SCHEDULED": logging.WARNING}


class SuspensionsAtInfo(logging.Filter):
    """Lowers the engine's `Finished in state` line for states that are part of normal work."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.ERROR or not isinstance(record.msg, str) \
                or not record.msg.startswith("Finished in state "):
            return True
        level = LEVEL_FOR_STATE_TYPE.get(state_type(record.getMessage()) or "")
        if level is not None:
            record.levelno, record.levelname = level, logging.getLevelName(level)
        return True


def state_type(message: str) -> str | None:
    """The state type named by a `Finished in state ...` line, or None for any other text."""
    finished = _FINISHED.match(message)
    if finished is None:
        return None
    typed = _TYPE.search(finished["display"])
    return typed["type"] if typed else finished["name"].upper()


def install(logger_name: str = FLOW_RUN_LOGGER) -> SuspensionsAtInfo:
    """Put the filter on the flow-run logger once; returns the filter in place."""
    logger = logging.getLogger(logger_name)
    for existing in logger.filters:
        if isinstance(existing, SuspensionsAtInfo):
            return existing
    installed = SuspensionsAtInfo()
    logger.addFilter(installed)
    return installed


def add_to_logging_config(config: dict[str, Any]) -> dict[str, Any]:
    """The same, for a `logging.config.dictConfig` dictionary such as Prefect's logging.yml."""
    config.setdefault("filters", {})["suspensions_at_info"] = {"()": f"{__name__}.SuspensionsAtInfo"}
    logger = config.setdefault("loggers", {}).setdefault(FLOW_RUN_LOGGER, {})
    filters = logger.setdefault("filters", [])
    if "suspensions_at_info" not in filters:
        filters.append("suspensions_at_info")
    return config


def write_logging_settings(path: Path, root_level: str | None = None) -> Path:
    """Prefect's default logging configuration with the filter on, written to `path`: give it to every process
    that runs flows through `PREFECT_LOGGING_SETTINGS_PATH` (`make run` does, for its children; production's
    process workers and `prefect.serve` children need it, warm workers install the filter themselves)."""
    import importlib.util

    import yaml
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin is not None
    config = yaml.safe_load((Path(spec.origin).parent / "logging" / "logging.yml").read_text())
    if root_level:
        config["root"]["level"] = root_level
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(add_to_logging_config(config)))
    return path
