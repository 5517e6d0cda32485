"""Azure Functions entry point: wiring only."""

import azure.functions as func

from sync import api, jobs

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_blueprint(api.bp)
app.register_blueprint(jobs.bp)
