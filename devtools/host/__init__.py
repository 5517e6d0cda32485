"""A small local stand-in for the Azure Functions host (Core Tools cannot be installed here).

It runs `function_app.py` from the app's own registrations, as `func start` would, on 127.0.0.1 only:

- HTTP triggers on aiohttp's router at http://127.0.0.1:7071/{routePrefix}/{route} (`routes.py`);
  requests whose Host header is not that loopback address/port are refused;
- App Service Authentication emulated (`easyauth.py`): the principal headers are set only for a
  session signed in at /.auth/login/aad as one of the dev identities (`identities.py`);
- queue triggers fed from Azurite with host.json `extensions.queues` semantics (`queues.py`);
- timer triggers NOT run on their schedule (a dev machine should not sync every tenant at night):
  run one with `POST /admin/functions/{name}` and body `{"input": ""}` (`admin.py`).

It holds no product logic: everything it knows comes from the bindings and host.json.
Run it with `python -m devtools.host [--port 7071]`; stop it with Ctrl-C.
"""

from devtools.host.config import HostError, parse_timespan
from devtools.host.easyauth import SESSION_COOKIE, encode_principal
from devtools.host.functions import indexed_functions
from devtools.host.identities import DEV_IDENTITIES, DevIdentity
from devtools.host.routes import aiohttp_path
from devtools.host.server import DEFAULT_PORT, DevHost

__all__ = [
    "DEFAULT_PORT",
    "DEV_IDENTITIES",
    "SESSION_COOKIE",
    "DevHost",
    "DevIdentity",
    "HostError",
    "aiohttp_path",
    "encode_principal",
    "indexed_functions",
    "parse_timespan",
]
