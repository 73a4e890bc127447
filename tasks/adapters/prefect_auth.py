"""Prefect's API locked: one basic-authentication secret shared by the server and every client of ours.

Without it anyone who reaches the Prefect API can resume a suspended order run with any run input (issue 16).
Prefect's open-source server knows one shared secret, the *auth string* (`user:password`):

- the server gets it as `PREFECT_SERVER_API_AUTH_STRING` and answers 401 to any request without it (except
  `GET /api/health` and `/api/ready`); its dashboard then asks for it once and keeps it in the browser;
- every client process (the app, the flow-serving process and its flow runs, workers, the CLI, the automations
  set-up) gets the same value as `PREFECT_API_AUTH_STRING`, which Prefect's client sends on every request;
- `PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS` is the app's origin only: no other web page may call the API from
  a browser (the dashboard is served by the Prefect server itself, same origin, so it needs no CORS).

The embedded default (`make run`) makes the secret at first start in `RO_DATA_DIR/prefect-api-auth`: created
atomically (written to a private temporary file, then linked into place, so two starts at once agree on one
secret and nobody ever reads half a file), readable by its owner only (0600), and reused on later starts.
It is never printed or logged; `make run` prints where the file is. Production sets the two variables from
its secret store instead (README, "Production layout").

Prefect reads its settings when it is first imported, so `use_embedded_secret()` must run before that.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import secrets
import stat
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

SECRET_FILE = "prefect-api-auth"
USER = "restriction-orders"
CLIENT_VAR = "PREFECT_API_AUTH_STRING"
SERVER_VAR = "PREFECT_SERVER_API_AUTH_STRING"
CORS_VAR = "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"


class SecretFileError(RuntimeError):
    """The secret file exists but cannot be used (empty, not a regular file, someone else's)."""


def secret_file(data_dir: Path) -> Path:
    return Path(data_dir) / SECRET_FILE


def new_secret() -> str:
    """`restriction-orders:<43 URL-safe characters>`: 256 random bits, no colon in the password part."""
    return f"{USER}:{secrets.token_urlsafe(32)}"


def read_secret(path: Path) -> str:
    """The stored secret. A file others may read is made owner-only first (and that is logged)."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise SecretFileError(f"{path} is not a regular file")
    if st.st_uid != os.getuid():
        raise SecretFileError(f"{path} belongs to another user")
    if st.st_mode & 0o077:
        os.chmod(path, 0o600)
        log.warning("%s was readable by others; made owner-only (0600)", path)
    value = path.read_text(encoding="utf-8").strip()
    if ":" not in value or len(value) < 16:
        raise SecretFileError(f"{path} does not hold an auth string (user:password)")
    return value


def ensure_secret(path: Path) -> str:
    """The secret in `path`, made at first call. Safe when several processes start at once: each writes a
    private temporary file and links it into place; the first link wins and everyone reads the winner's."""
    path = Path(path)
    if path.exists():
        return read_secret(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new_secret() + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the new name survives a power cut too
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return read_secret(path)


def origin(url: str) -> str:
    """`http://127.0.0.1:8000/some/path` -> `http://127.0.0.1:8000` (what a browser sends as Origin)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def client_env(secret: str) -> dict[str, str]:
    """For every process that calls the Prefect API."""
    return {CLIENT_VAR: secret}


def server_env(secret: str, app_base_url: str) -> dict[str, str]:
    """For the Prefect server process: the secret, and CORS for the app's origin only."""
    return {SERVER_VAR: secret, CORS_VAR: origin(app_base_url), **client_env(secret)}


def basic_auth_header(secret: str) -> dict[str, str]:
    """The header Prefect's client sends (for raw HTTP calls: health checks, tests)."""
    return {"Authorization": "Basic " + base64.b64encode(secret.encode("utf-8")).decode("ascii")}


def use_embedded_secret(data_dir: Path) -> bool:
    """For a process started by hand on the embedded default (the CLI, `python -m flows.serve`): when
    `PREFECT_API_AUTH_STRING` is not set and the embedded secret file exists, use it. Call before Prefect
    is imported. True when the variable is set afterwards."""
    if os.environ.get(CLIENT_VAR):
        return True
    path = secret_file(data_dir)
    if not path.exists():
        return False
    os.environ[CLIENT_VAR] = read_secret(path)
    return True
