"""The page's files: served by whitelisted name only, with their types, no-cache and a strict CSP;
and written so that CSP holds (no inline script or style) and untrusted text never becomes HTML."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from sync import web

WEB = Path(web.__file__).resolve().parent.parent / "web"


def get(
    function: Any, url: str, route: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> func.HttpResponse:
    request = func.HttpRequest(
        method="GET", url=url, headers=headers or {}, params={}, route_params=route or {}, body=b""
    )
    response: func.HttpResponse = function(request)
    return response


def test_the_page_is_html_with_a_strict_policy_and_no_cache() -> None:
    response = get(web.web_page, "http://127.0.0.1:7071/api/ui?tenant=x")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert b"Sync by O365 Groups" in response.get_body()
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "frame-ancestors 'none'" in csp
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(("name", "mimetype"), [("app.js", "text/javascript"), ("styles.css", "text/css")])
def test_whitelisted_assets_have_their_content_type(name: str, mimetype: str) -> None:
    response = get(web.web_asset, f"http://h/api/ui/{name}", {"asset": name})
    assert response.status_code == 200
    assert response.mimetype == mimetype
    assert response.get_body() == (WEB / name).read_bytes()
    assert response.headers["Cache-Control"] == "no-cache"
    assert "Content-Security-Policy" in response.headers


@pytest.mark.parametrize("name", ["index.html", "../sync/api.py", "..%2Fapi.py", "APP.JS", "app.js.map", ""])
def test_anything_else_is_not_found(name: str) -> None:
    response = get(web.web_asset, f"http://h/api/ui/{name}", {"asset": name})
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"


def test_an_unchanged_file_answers_304_to_its_etag() -> None:
    first = get(web.web_asset, "http://h/api/ui/app.js", {"asset": "app.js"})
    etag = first.headers["ETag"]
    again = get(web.web_asset, "http://h/api/ui/app.js", {"asset": "app.js"}, {"if-none-match": etag})
    assert again.status_code == 304 and again.get_body() == b""
    other = get(web.web_asset, "http://h/api/ui/app.js", {"asset": "app.js"}, {"if-none-match": '"stale"'})
    assert other.status_code == 200


def test_a_trailing_slash_redirects_to_the_page_keeping_the_query() -> None:
    response = get(web.web_page, "http://h/api/ui/?tenant=abc")
    assert response.status_code == 308
    assert response.headers["Location"] == "../ui?tenant=abc"


def test_the_page_keeps_to_its_own_csp() -> None:
    html = (WEB / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline <script> would be refused by the CSP"
    assert "<style" not in html and " style=" not in html, "inline styles would be refused by the CSP"
    assert not re.search(r"\son[a-z]+=", html), "inline event handlers would be refused by the CSP"
    assert re.search(r'src="ui/app\.js"', html) and re.search(r'href="ui/styles\.css"', html)


def test_the_script_never_turns_text_into_html() -> None:
    script = (WEB / "app.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, f"app.js uses {sink}"


def test_the_script_parses(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node is not None, "node is not on PATH (a prerequisite of make test: Azurite runs on it)"
    module = tmp_path / "app.mjs"  # an ES module, as the page loads it
    module.write_bytes((WEB / "app.js").read_bytes())
    result = subprocess.run([node, "--check", str(module)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
