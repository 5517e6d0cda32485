"""Telemetry: OpenTelemetry to Application Insights, run ids on every log line, one summary per run.

One telemetry path, the one Microsoft documents for Python on Functions with Application
Insights (learn.microsoft.com/azure/azure-functions/opentelemetry-howto): host.json
`telemetryMode: OpenTelemetry`, and the app setting PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true
with which the Python worker itself calls `configure_azure_monitor` for the logger named in
PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME ("sync") before it imports function_app.py, and tells the
host so, which then stops exporting the worker's logs a second time. `configure_telemetry()` (called
once from function_app.py) then only adds the run ids to that exporter. Anywhere else (a host
without that setting) it configures the same distro itself. It does nothing without
APPLICATIONINSIGHTS_CONNECTION_STRING, so local runs and tests never export anything. With App
Insights local auth switched off, the exporter authenticates with the managed identity named in
APPLICATIONINSIGHTS_AUTHENTICATION_STRING (`ClientId=...;Authorization=AAD`), which it reads itself.
PYTHON_ENABLE_OPENTELEMETRY must not be set: in the worker it only marks OpenTelemetry as present,
without the trace-context propagator, and every async invocation then fails
(azure-functions-python-worker issue #1881); Microsoft lists it for OTLP export only.

`run_context()` marks the work of one refresh run; `RunContextFilter` stamps its tenantId and
runId on every record logged inside it (they become customDimensions). `log_run_summary()`
emits one `SyncRunSummary` custom event per finished run: the record the alert and the KQL
queries in the README ("Watching runs") read; `log_tenant_skipped()` one `TenantSkipped` event per
tenant the nightly sync leaves out.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

CONNECTION_STRING_SETTING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
# With this setting "true" the Python worker configures Azure Monitor itself (see above).
WORKER_TELEMETRY_SETTING = "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"
# The logger the worker exports; infra/app/api.bicep sets it to APP_LOGGER_NAME.
WORKER_LOGGER_SETTING = "PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME"
# The logger whose records are exported: every module of the app logs under "sync." (the
# Functions worker's root logger forwards everything to the host's log stream as well).
APP_LOGGER_NAME = "sync"
RUN_SUMMARY_EVENT = "SyncRunSummary"
TENANT_SKIPPED_EVENT = "TenantSkipped"  # a tenant the nightly sync left out, and why
# azure-monitor-opentelemetry turns a log record carrying this attribute into a custom event
# (AppEvents / customEvents) named by its value, instead of a trace.
CUSTOM_EVENT_ATTRIBUTE = "microsoft.custom_event.name"
ERROR_TEXT_LIMIT = 1000  # an App Insights property keeps 8 KiB; the run record keeps the full text

log = logging.getLogger("sync.telemetry")

_tenant_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("sync_tenant_id", default=None)
_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("sync_run_id", default=None)
_configured = False


@contextlib.contextmanager
def run_context(tenant_id: str, run_id: str) -> Iterator[None]:
    """Mark everything logged inside (this task and the tasks it starts) as part of one run."""
    tenant_token = _tenant_id.set(tenant_id)
    run_token = _run_id.set(run_id)
    try:
        yield
    finally:
        _run_id.reset(run_token)
        _tenant_id.reset(tenant_token)


def current_run() -> tuple[str | None, str | None]:
    """The (tenantId, runId) of the run being worked on in this context, or Nones."""
    return _tenant_id.get(), _run_id.get()


class RunContextFilter(logging.Filter):
    """Adds tenantId and runId from `run_context()` to records that do not carry them already."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Stamp the ids; never drops a record."""
        tenant_id, run_id = current_run()
        if tenant_id is not None and getattr(record, "tenantId", None) is None:
            record.tenantId = tenant_id
        if run_id is not None and getattr(record, "runId", None) is None:
            record.runId = run_id
        return True


def run_summary(run: msgspec.Struct) -> dict[str, str | int | float | bool]:
    """The flat summary of a finished run (a sync.models.Run): ids, outcome, counts, cost.

    Flat scalar values only, because OpenTelemetry drops attributes that are dicts; no user
    names or addresses, only tenant and run ids.
    """
    data: Mapping[str, Any] = msgspec.to_builtins(run)
    counts: Mapping[str, Any] = data.get("counts") or {}
    excluded: Mapping[str, Any] = counts.get("excluded") or {}
    summary: dict[str, str | int | float | bool] = {
        "tenantId": str(data.get("tenantId", "")),
        "runId": str(data.get("id", "")),
        "status": str(data.get("status", "")),
        "reason": str(data.get("reason", "")),
        "dryRun": bool(data.get("dryRun", False)),
        "incremental": bool(data.get("incremental", False)),
        "durationSeconds": float(data.get("durationSeconds") or 0.0),
        "graphRequests": int(data.get("graphRequests") or 0),
        "groups": len(data.get("groups") or []),
    }
    for name in ("members", "eligible", "added", "updated", "removed", "restored", "unchanged"):
        summary[name] = int(counts.get(name) or 0)
    summary["excluded"] = sum(int(value or 0) for value in excluded.values())
    for name, value in excluded.items():
        summary[f"excluded{name[:1].upper()}{name[1:]}"] = int(value or 0)
    if data.get("guard"):
        summary["guard"] = str(data["guard"])[:ERROR_TEXT_LIMIT]
    if data.get("error"):
        summary["error"] = str(data["error"])[:ERROR_TEXT_LIMIT]
    return summary


_SUMMARY_LEVELS = {"failed": logging.ERROR, "held": logging.WARNING}


def log_run_summary(run: msgspec.Struct, logger: logging.Logger | None = None) -> dict[str, Any]:
    """Emit ONE `SyncRunSummary` record for a finished run; returns what was logged."""
    summary = run_summary(run)
    level = _SUMMARY_LEVELS.get(str(summary["status"]), logging.INFO)
    (logger or log).log(
        level,
        "%s tenant=%s run=%s status=%s removed=%s duration=%ss",
        RUN_SUMMARY_EVENT,
        summary["tenantId"],
        summary["runId"],
        summary["status"],
        summary["removed"],
        summary["durationSeconds"],
        extra={CUSTOM_EVENT_ATTRIBUTE: RUN_SUMMARY_EVENT, "event": RUN_SUMMARY_EVENT, **summary},
    )
    return summary


def log_tenant_skipped(tenant_id: str, reason: str, logger: logging.Logger | None = None) -> dict[str, str]:
    """Emit ONE `TenantSkipped` warning (a custom event in Application Insights) for a tenant the
    nightly sync did not queue, e.g. because the app's admin consent is missing there."""
    fields = {"tenantId": tenant_id, "reason": reason}
    (logger or log).warning(
        "%s tenant=%s reason=%s",
        TENANT_SKIPPED_EVENT,
        tenant_id,
        reason,
        extra={CUSTOM_EVENT_ATTRIBUTE: TENANT_SKIPPED_EVENT, "event": TENANT_SKIPPED_EVENT, **fields},
    )
    return fields


def _install_filter(logger_name: str) -> int:
    """Put RunContextFilter on every handler of the logger; returns how many handlers it has."""
    handlers = logging.getLogger(logger_name).handlers
    for handler in handlers:
        if not any(isinstance(f, RunContextFilter) for f in handler.filters):
            handler.addFilter(RunContextFilter())
    return len(handlers)


def configure_telemetry(environ: Mapping[str, str] | None = None) -> bool:
    """Send the app's telemetry to Application Insights; a no-op without a connection string.

    Returns True when telemetry is configured (by this call or an earlier one).
    """
    global _configured
    env = os.environ if environ is None else environ
    connection_string = env.get(CONNECTION_STRING_SETTING, "").strip()
    if not connection_string:
        return False
    if _configured:
        return True
    worker_exports = env.get(WORKER_TELEMETRY_SETTING, "").strip().lower() == "true"
    # With worker_exports the worker configured the distro before importing this app; a second
    # configure_azure_monitor would add a second exporter and send every record twice.
    if not worker_exports:
        try:
            from azure.monitor.opentelemetry import configure_azure_monitor

            configure_azure_monitor(
                connection_string=connection_string,
                logger_name=APP_LOGGER_NAME,
                # Web frameworks and database drivers the distro would instrument are not used here.
                instrumentation_options={
                    "django": {"enabled": False},
                    "fastapi": {"enabled": False},
                    "flask": {"enabled": False},
                    "psycopg2": {"enabled": False},
                },
            )
        except Exception:
            # Telemetry must not take the sync down with it; the host's own log stream shows this.
            log.exception("Application Insights telemetry could not be configured")
            return False
    logging.getLogger(APP_LOGGER_NAME).setLevel(logging.INFO)
    if not _install_filter(APP_LOGGER_NAME) and worker_exports:
        log.warning(
            "%s is true but logger %r has no exporting handler", WORKER_TELEMETRY_SETTING, APP_LOGGER_NAME
        )
    _configured = True
    return True
