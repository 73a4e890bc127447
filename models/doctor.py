"""Is this a production environment that may start? The checks of `restriction-orders doctor`, which the app
and the workers also run before they start in production (tasks/adapters/doctor.py gathers what they need).

Pure: they take what the settings say (`Environment`) and what the probes found (`Probes`), and return every
problem at once, so an operator fixes them in one round rather than one per restart. An `error` stops the
app and the workers from starting; a `warning` is printed and does not.

Production is any environment without the embedded login and without the demo (`RO_EMBEDDED_LOGIN=false`,
`RO_DEMO` unset); `make run` and the tests are neither checked nor stopped.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

Severity = Literal["error", "warning"]
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    severity: Severity = "error"

    def line(self) -> str:
        return f"{'FEL' if self.severity == 'error' else 'varning'} [{self.code}] {self.message}"


@dataclass(frozen=True)
class Environment:
    """What the settings say (no secret in it: the session secret's length and whether it is the default)."""

    app_base_url: str
    app_base_url_set: bool
    smtp_from: str
    session_secret_length: int
    session_secret_is_default: bool
    min_session_secret_length: int
    embedded_login: bool
    demo: bool
    database_url_set: bool
    trusted_proxies: str
    forwarded_allow_ips: str  # uvicorn's FORWARDED_ALLOW_IPS: whose X-Forwarded-For it believes

    @property
    def production(self) -> bool:
        return not self.embedded_login and not self.demo


@dataclass(frozen=True)
class PrefectProbe:
    api_url: str               # "" when PREFECT_API_URL is not set
    reachable: bool = False
    detail: str = ""           # why not reachable, or the status of the authenticated call
    authenticated: bool = False
    open_without_auth: bool = False  # the API answered a request without the auth string


@dataclass(frozen=True)
class DatabaseProbe:
    reachable: bool
    detail: str = ""
    revision: str | None = None   # alembic_version in the database
    head: str = ""                # the newest migration of this code


@dataclass(frozen=True)
class Probes:
    prefect: PrefectProbe
    database: DatabaseProbe
    regions_error: str = ""                                        # the regions file cannot be loaded
    regions_unset: dict[str, list[str]] = field(default_factory=dict)  # region code -> unset values
    regions_unsourced: dict[str, list[str]] = field(default_factory=dict)


def _host_is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _networks(spec: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
    try:
        return [ipaddress.ip_network(p.strip(), strict=False) for p in spec.split(",") if p.strip()]
    except ValueError:
        return None


def check_app_url(env: Environment) -> list[Problem]:
    if not env.app_base_url_set:
        return [Problem("app_base_url", "RO_APP_BASE_URL är inte satt: länkarna i e-posten går till "
                                        f"{env.app_base_url}. Sätt den till appens adress, https://…")]
    if _host_is_loopback(env.app_base_url):
        return [Problem("app_base_url", f"RO_APP_BASE_URL={env.app_base_url} pekar på den egna maskinen: "
                                        "ingen mottagare av e-posten når appen där.")]
    if urlsplit(env.app_base_url).scheme != "https":
        return [Problem("app_base_url", f"RO_APP_BASE_URL={env.app_base_url} är inte https: sessionskakan "
                                        "sätts då utan Secure.")]
    return []


def check_mail_and_session(env: Environment) -> list[Problem]:
    out = []
    sender = env.smtp_from.rsplit("<", 1)[-1].rstrip(">").strip().lower()
    if sender.endswith(".invalid") or "@" not in sender:
        out.append(Problem("smtp_from", f"RO_SMTP_FROM ({sender or 'tom'}) är ingen riktig avsändare: svar "
                                        "och studsar kommer aldrig fram. Sätt regionens avsändaradress."))
    if env.session_secret_is_default or env.session_secret_length < env.min_session_secret_length:
        out.append(Problem("session_secret", "RO_SESSION_SECRET saknas eller är kortare än "
                                             f"{env.min_session_secret_length} tecken."))
    if not env.database_url_set:
        out.append(Problem("database_url", "DATABASE_URL är inte satt: appen skulle använda en SQLite-fil "
                                           "(den inbyggda standarden), inte regionens PostgreSQL."))
    return out


def check_proxy(env: Environment) -> list[Problem]:
    """Behind the SSO proxy the app believes `X-Remote-User` only from RO_TRUSTED_PROXIES, compared with the
    client address uvicorn reports. uvicorn replaces that address with the first of `X-Forwarded-For` when the
    peer is in its FORWARDED_ALLOW_IPS (127.0.0.1 by default): a proxy in both lists then shows up as the
    user's own address, never trusted, and everyone is locked out."""
    trusted, forwarded = _networks(env.trusted_proxies), env.forwarded_allow_ips.strip()
    if trusted is None:
        return [Problem("trusted_proxies", f"RO_TRUSTED_PROXIES={env.trusted_proxies!r} är inga adresser/nät.")]
    if not trusted:
        return [Problem("trusted_proxies", "RO_TRUSTED_PROXIES är tom: ingen kan logga in via SSO-proxyn.")]
    if forwarded == "*":
        return [Problem("forwarded_allow_ips", "FORWARDED_ALLOW_IPS=* får uvicorn att tro på X-Forwarded-For "
                                               "från alla: SSO-proxyns huvud kan aldrig betros. Sätt den tom.")]
    allowed = _networks(forwarded) or []
    both = [str(t) for t in trusted if any(t.overlaps(a) for a in allowed if t.version == a.version)]
    if both:
        return [Problem("forwarded_allow_ips",
                        f"SSO-proxyn ({', '.join(both)}) står både i RO_TRUSTED_PROXIES och i uvicorns "
                        f"FORWARDED_ALLOW_IPS ({forwarded}): uvicorn byter då proxyns adress mot användarens "
                        "från X-Forwarded-For och alla blir utelåsta. Starta uvicorn med "
                        "--forwarded-allow-ips='' (eller FORWARDED_ALLOW_IPS='').")]
    return []


def check_prefect(p: PrefectProbe) -> list[Problem]:
    if not p.api_url:
        return [Problem("prefect", "PREFECT_API_URL är inte satt.")]
    if _host_is_loopback(p.api_url):
        out = [Problem("prefect_local", f"PREFECT_API_URL={p.api_url} är den egna maskinen; arbetarna "
                                        "och appen på andra maskiner når den inte.", "warning")]
    else:
        out = []
    if not p.reachable:
        return [*out, Problem("prefect", f"Prefect ({p.api_url}) svarar inte: {p.detail}")]
    if p.open_without_auth:
        out.append(Problem("prefect_open", f"Prefects API ({p.api_url}) svarar utan lösen: sätt "
                                           "PREFECT_SERVER_API_AUTH_STRING på servern (README: Production layout)."))
    if not p.authenticated:
        out.append(Problem("prefect_auth", f"Prefect ({p.api_url}) nekar: {p.detail}. PREFECT_API_AUTH_STRING "
                                           "ska vara samma som serverns PREFECT_SERVER_API_AUTH_STRING."))
    return out


def check_database(d: DatabaseProbe) -> list[Problem]:
    if not d.reachable:
        return [Problem("database", f"Beställningsdatabasen går inte att nå: {d.detail}")]
    if d.revision != d.head:
        return [Problem("migrations", f"Databasen är på migrering {d.revision or 'ingen'}, koden kräver {d.head}: "
                                      "kör `python -m tasks.adapters.database migrate` som schemats ägare och "
                                      "sedan `restriction-orders app-role`.")]
    return []


def check_regions(p: Probes) -> list[Problem]:
    if p.regions_error:
        return [Problem("regions", f"Regioninställningarna går inte att läsa: {p.regions_error}")]
    out = [Problem("regions", f"Region {code}: inte inställt (värde med källa saknas): {', '.join(names)}")
           for code, names in sorted(p.regions_unset.items()) if names]
    out += [Problem("regions_source", f"Region {code}: värde utan källa räknas som inte inställt: {', '.join(names)}",
                    "warning") for code, names in sorted(p.regions_unsourced.items()) if names]
    return out


def check(env: Environment, probes: Probes) -> list[Problem]:
    """Every problem of this environment, errors first."""
    problems = [*check_app_url(env), *check_mail_and_session(env), *check_proxy(env)]
    if env.embedded_login:
        problems.append(Problem("embedded_login", "RO_EMBEDDED_LOGIN är inte false: vem som helst kan välja "
                                                  "en demoanvändare på inloggningssidan."))
    if env.demo:
        problems.append(Problem("demo", "RO_DEMO är satt: varje sida och PDF märks Demo och regionernas "
                                        "demo-adresser används."))
    problems += [*check_prefect(probes.prefect), *check_database(probes.database), *check_regions(probes)]
    return sorted(problems, key=lambda p: p.severity != "error")


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]
