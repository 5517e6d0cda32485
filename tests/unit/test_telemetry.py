"""Telemetry: the run summary record, run ids on every log line, no export without a connection string."""

from __future__ import annotations

import asyncio
import logging
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from shared import telemetry
from shared.telemetry import (
    CUSTOM_EVENT_ATTRIBUTE,
    RUN_SUMMARY_EVENT,
    RunContextFilter,
    configure_telemetry,
    current_run,
    log_run_summary,
    run_context,
    run_summary,
)
from sync.models import ExcludedCounts, Run, RunCounts, RunGroup, RunStatus

TENANT = "840fa9a3-916c-42ac-99ab-a1e9158955c5"


def finished_run(status: RunStatus = RunStatus.SUCCEEDED, **changes: Any) -> Run:
    values: dict[str, Any] = {
        "id": "r-20260101-0001",
        "tenant_id": TENANT,
        "status": status,
        "reason": "nightly",
        "requested_at": "2026-01-01T02:00:00Z",
        "requested_by": "admin@contoso.example",
        "duration_seconds": 12.5,
        "graph_requests": 42,
        "counts": RunCounts(
            members=130,
            eligible=100,
            added=3,
            updated=2,
            removed=5,
            restored=1,
            unchanged=89,
            excluded=ExcludedCounts(
                guest=10, disabled=5, unlicensed=4, shared_mailbox=6, service_account=3, rule=2
            ),
        ),
        "groups": [RunGroup(id="g1", display_name="Sales", members=130, eligible=100)],
    }
    values.update(changes)
    return Run(**values)


# --- the summary record ---------------------------------------------------------------------


def test_summary_has_ids_outcome_counts_and_cost() -> None:
    summary = run_summary(finished_run())
    assert summary["tenantId"] == TENANT
    assert summary["runId"] == "r-20260101-0001"
    assert summary["status"] == "succeeded"
    assert summary["reason"] == "nightly"
    assert summary["dryRun"] is False
    assert summary["durationSeconds"] == 12.5
    assert summary["graphRequests"] == 42
    assert summary["groups"] == 1
    assert {k: summary[k] for k in ("members", "eligible", "added", "updated", "removed", "restored")} == {
        "members": 130,
        "eligible": 100,
        "added": 3,
        "updated": 2,
        "removed": 5,
        "restored": 1,
    }
    assert summary["unchanged"] == 89
    assert summary["excluded"] == 30
    assert summary["excludedSharedMailbox"] == 6
    assert summary["excludedServiceAccount"] == 3
    assert "error" not in summary


def test_summary_values_are_flat_scalars_without_personal_data() -> None:
    summary = run_summary(finished_run())
    assert all(isinstance(value, str | int | float | bool) for value in summary.values())
    assert "admin@contoso.example" not in str(summary.values())


def test_failed_run_summary_carries_the_error_truncated() -> None:
    summary = run_summary(finished_run(RunStatus.FAILED, error="403 on group g1. " * 200))
    assert summary["status"] == "failed"
    assert str(summary["error"]).startswith("403 on group g1.")
    assert len(str(summary["error"])) == telemetry.ERROR_TEXT_LIMIT


def test_held_run_summary_says_why() -> None:
    summary = run_summary(finished_run(RunStatus.HELD, guard="40 removals exceed 10% and 20 users"))
    assert summary["guard"] == "40 removals exceed 10% and 20 users"


def test_log_run_summary_emits_exactly_one_custom_event_record(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sync.telemetry"):
        logged = log_run_summary(finished_run(RunStatus.FAILED, error="Graph said 403"))
    records = [r for r in caplog.records if getattr(r, "event", None) == RUN_SUMMARY_EVENT]
    assert len(records) == 1
    record = records[0]
    assert record.levelno == logging.ERROR
    assert getattr(record, CUSTOM_EVENT_ATTRIBUTE) == RUN_SUMMARY_EVENT
    for name, value in logged.items():
        assert getattr(record, name) == value
    assert RUN_SUMMARY_EVENT in record.getMessage()


@pytest.mark.parametrize(
    ("status", "level"),
    [
        (RunStatus.SUCCEEDED, logging.INFO),
        (RunStatus.HELD, logging.WARNING),
        (RunStatus.FAILED, logging.ERROR),
    ],
)
def test_summary_level_follows_the_outcome(
    status: RunStatus, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="sync.telemetry"):
        log_run_summary(finished_run(status))
    assert [r.levelno for r in caplog.records if getattr(r, "event", None) == RUN_SUMMARY_EVENT] == [level]


def test_summary_becomes_an_app_insights_custom_event_with_its_dimensions() -> None:
    """The exporter's own conversion: an EventData named SyncRunSummary, every field a property."""
    sdk_logs = pytest.importorskip("opentelemetry.sdk._logs")
    sdk_export = pytest.importorskip("opentelemetry.sdk._logs.export")
    # The handler azure-monitor-opentelemetry attaches to the app logger.
    otel_logging = pytest.importorskip("opentelemetry.instrumentation.logging.handler")
    exporter_module = pytest.importorskip("azure.monitor.opentelemetry.exporter.export.logs._exporter")

    memory = sdk_export.InMemoryLogRecordExporter()
    provider = sdk_logs.LoggerProvider()
    provider.add_log_record_processor(sdk_export.SimpleLogRecordProcessor(memory))
    handler = otel_logging.LoggingHandler(logger_provider=provider)
    logger = logging.getLogger("sync.telemetry.test-export")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logged = log_run_summary(finished_run(RunStatus.HELD, guard="too many removals"), logger)
    finally:
        logger.removeHandler(handler)
        provider.shutdown()
    (exported,) = memory.get_finished_logs()
    envelope = exporter_module._convert_log_to_envelope(exported)
    assert envelope.data.base_type == "EventData"
    assert envelope.data.base_data.name == RUN_SUMMARY_EVENT
    properties = envelope.data.base_data.properties
    for name, value in logged.items():
        assert properties[name] == str(value), name


# --- tenantId and runId on every line of a run ----------------------------------------------


@pytest.fixture
def captured() -> Iterator[list[logging.LogRecord]]:
    """Records of the "sync.test-run" logger, through RunContextFilter as on the exporting handler."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    handler.addFilter(RunContextFilter())
    logger = logging.getLogger("sync.test-run")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)


def test_filter_adds_the_run_ids_to_lines_logged_without_them(captured: list[logging.LogRecord]) -> None:
    logger = logging.getLogger("sync.test-run")
    with run_context(TENANT, "run-1"):
        logger.info("reading group members")
    logger.info("between runs")
    assert (captured[0].tenantId, captured[0].runId) == (TENANT, "run-1")  # type: ignore[attr-defined]
    assert not hasattr(captured[1], "tenantId")
    assert not hasattr(captured[1], "runId")
    assert current_run() == (None, None)


def test_filter_keeps_ids_the_caller_gave(captured: list[logging.LogRecord]) -> None:
    with run_context(TENANT, "run-1"):
        logging.getLogger("sync.test-run").info("other run", extra={"tenantId": "t-2", "runId": "run-2"})
    assert (captured[0].tenantId, captured[0].runId) == ("t-2", "run-2")  # type: ignore[attr-defined]


async def test_concurrent_runs_keep_their_own_ids(captured: list[logging.LogRecord]) -> None:
    logger = logging.getLogger("sync.test-run")

    async def step(number: int) -> None:
        await asyncio.sleep(0)  # let the other run interleave
        logger.info("step %d", number)

    async def run(run_id: str) -> None:
        with run_context(TENANT, run_id):
            for number in range(3):
                await asyncio.create_task(step(number))  # logged from a task the run started

    await asyncio.gather(run("run-a"), run("run-b"))
    by_run: dict[str, list[str]] = {}
    for record in captured:
        by_run.setdefault(record.runId, []).append(record.getMessage())  # type: ignore[attr-defined]
    assert by_run == {"run-a": ["step 0", "step 1", "step 2"], "run-b": ["step 0", "step 1", "step 2"]}


# --- configuration --------------------------------------------------------------------------


@pytest.fixture
def fresh_telemetry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(telemetry, "_configured", False)
    yield
    telemetry._configured = False


def test_configure_is_a_no_op_without_a_connection_string(
    monkeypatch: pytest.MonkeyPatch, fresh_telemetry: None
) -> None:
    # Importing the distro would fail: proves configure does not even load it.
    monkeypatch.setitem(sys.modules, "azure.monitor.opentelemetry", None)
    handlers_before = list(logging.getLogger(telemetry.APP_LOGGER_NAME).handlers)
    assert configure_telemetry({}) is False
    assert configure_telemetry({"APPLICATIONINSIGHTS_CONNECTION_STRING": "  "}) is False
    assert logging.getLogger(telemetry.APP_LOGGER_NAME).handlers == handlers_before


def test_configure_sends_the_app_logger_to_azure_monitor_with_the_run_filter(
    monkeypatch: pytest.MonkeyPatch, fresh_telemetry: None
) -> None:
    calls: list[dict[str, Any]] = []
    exporting = logging.NullHandler()

    def configure_azure_monitor(**kwargs: Any) -> None:
        calls.append(kwargs)
        logging.getLogger(kwargs["logger_name"]).addHandler(exporting)

    fake = types.ModuleType("azure.monitor.opentelemetry")
    fake.configure_azure_monitor = configure_azure_monitor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "azure.monitor.opentelemetry", fake)
    app_logger = logging.getLogger(telemetry.APP_LOGGER_NAME)
    monkeypatch.setattr(app_logger, "level", app_logger.level)
    env = {"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000"}
    try:
        assert configure_telemetry(env) is True
        assert configure_telemetry(env) is True  # idempotent: configured once per process
        assert len(calls) == 1
        assert calls[0]["connection_string"] == env["APPLICATIONINSIGHTS_CONNECTION_STRING"]
        assert calls[0]["logger_name"] == "sync"
        assert any(isinstance(f, RunContextFilter) for f in exporting.filters)
    finally:
        app_logger.removeHandler(exporting)


def test_a_broken_telemetry_setup_does_not_stop_the_app(
    monkeypatch: pytest.MonkeyPatch, fresh_telemetry: None, caplog: pytest.LogCaptureFixture
) -> None:
    def configure_azure_monitor(**kwargs: Any) -> None:
        raise ValueError("Invalid instrumentation key")

    fake = types.ModuleType("azure.monitor.opentelemetry")
    fake.configure_azure_monitor = configure_azure_monitor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "azure.monitor.opentelemetry", fake)
    with caplog.at_level(logging.ERROR, logger="sync.telemetry"):
        assert configure_telemetry({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x"}) is False
    assert "could not be configured" in caplog.text


def test_when_the_worker_exports_the_app_adds_run_ids_but_no_second_exporter(
    monkeypatch: pytest.MonkeyPatch, fresh_telemetry: None
) -> None:
    """PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true: the worker configured Azure Monitor for the
    "sync" logger before importing the app; configuring it again would export every record twice."""

    def configure_azure_monitor(**kwargs: Any) -> None:
        raise AssertionError("configure_azure_monitor called a second time")

    fake = types.ModuleType("azure.monitor.opentelemetry")
    fake.configure_azure_monitor = configure_azure_monitor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "azure.monitor.opentelemetry", fake)
    app_logger = logging.getLogger(telemetry.APP_LOGGER_NAME)
    monkeypatch.setattr(app_logger, "level", app_logger.level)
    exporting = logging.NullHandler()  # what the worker's configure_azure_monitor attached
    app_logger.addHandler(exporting)
    env = {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000",
        telemetry.WORKER_TELEMETRY_SETTING: "true",
    }
    try:
        assert configure_telemetry(env) is True
        assert any(isinstance(f, RunContextFilter) for f in exporting.filters)
        assert app_logger.level == logging.INFO
    finally:
        app_logger.removeHandler(exporting)
