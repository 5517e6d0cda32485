"""Azure Functions entry point: wiring only."""

import azure.functions as func

from shared.telemetry import configure_telemetry
from sync import api, jobs, web

configure_telemetry()  # Application Insights in Azure; nothing without APPLICATIONINSIGHTS_CONNECTION_STRING
app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_blueprint(api.bp)
app.register_blueprint(jobs.bp)
app.register_blueprint(web.bp)
