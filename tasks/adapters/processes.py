"""Child processes of ours (the Prefect server, the flow-serving process, the app) as the embedded launcher,
the benchmarks and the tests start them: wait until one answers, stop several."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable

import httpx


class ExitedEarly(RuntimeError):
    """The process exited while we waited for it to answer."""


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, every: float = 0.5) -> None:
    """Until `url` answers 200; TimeoutError after `timeout` s, ExitedEarly as soon as `proc` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ExitedEarly(f"process for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(every)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop_all(procs: Iterable[subprocess.Popen[bytes]], grace: float = 15) -> None:
    """SIGTERM each, in the order given, and SIGKILL what has not ended within `grace` s."""
    for p in procs:
        p.terminate()
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
