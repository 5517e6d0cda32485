"""What the host reads before it starts: host.json, local.settings.json, `%SETTING%` expressions."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_ROUTE_PREFIX = "api"
SAMPLE_SETTINGS = Path(__file__).resolve().parents[2] / "local.settings.sample.json"
# The app settings the function bindings name as `%NAME%` (sync/jobs.py): Azure, like this host,
# will not run a function whose expression does not resolve.
BINDING_SETTINGS = ("SYNC_QUEUE", "NOTIFY_QUEUE", "SYNC_SCHEDULE", "NOTIFY_RENEW_SCHEDULE")


class HostError(RuntimeError):
    """The app or its settings cannot be hosted; the message says which and why."""


_EXPRESSION = re.compile(r"%([^%]+)%")


def resolve_expression(value: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace every `%NAME%` in a binding value with the app setting NAME (HostError if unset)."""
    env = os.environ if environ is None else environ

    def setting(match: re.Match[str]) -> str:
        name = match.group(1)
        if not env.get(name):
            raise HostError(
                f"the binding expression '%{name}%' does not resolve to a value: set {name} in "
                "local.settings.json Values or the environment"
            )
        return env[name]

    return _EXPRESSION.sub(setting, value)


def sample_binding_settings() -> dict[str, str]:
    """The binding settings with local.settings.sample.json's values, for a process that hosts the
    app without a local.settings.json (the benchmarks)."""
    values = json.loads(SAMPLE_SETTINGS.read_text(encoding="utf-8"))["Values"]
    return {name: values[name] for name in BINDING_SETTINGS}


def parse_timespan(value: str | float) -> float:
    """A host.json TimeSpan ("[d.]hh:mm:ss[.fff]") in seconds."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"\s*(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)\s*", value)
    if not match:
        raise HostError(f"{value!r} is not a TimeSpan such as '00:00:30' or '00:00:00.5'")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def load_host_json(script_root: Path, override: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """host.json from the script root, with `override` merged over it key by key."""
    path = script_root / "host.json"
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise HostError(f"{path} is not valid JSON: {exc}") from exc
    return _deep_merge(data, override or {})


def route_prefix(host_json: Mapping[str, Any]) -> str:
    """host.json `extensions.http.routePrefix` without slashes ("api" unless set; "" allowed)."""
    http = (host_json.get("extensions") or {}).get("http") or {}
    return str(http.get("routePrefix", DEFAULT_ROUTE_PREFIX)).strip("/")


def function_timeout(host_json: Mapping[str, Any]) -> float | None:
    """host.json `functionTimeout` in seconds (None: no limit)."""
    value = host_json.get("functionTimeout")
    return parse_timespan(value) if value not in (None, "-1") else None


def read_local_settings(path: Path) -> dict[str, str]:
    """The `Values` of a local.settings.json ({} when the file is absent)."""
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text(encoding="utf-8")).get("Values") or {}
    except (ValueError, AttributeError) as exc:
        raise HostError(f"{path} is not a valid local.settings.json: {exc}") from exc
    return {str(k): str(v) for k, v in values.items() if v is not None}


def configure_logging(verbose: bool = False) -> None:
    """Log to stderr as the Functions host console does (host lines, function logs, no SDK chatter)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="[%(asctime)s] %(message)s",
        stream=sys.stderr,
    )
    # The storage SDK logs every HTTP request at INFO; the invocation lines are what matter here.
    logging.getLogger("azure").setLevel(logging.WARNING)
