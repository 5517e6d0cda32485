#!/usr/bin/env bash
# Stop before deploying with a Bicep older than MIN_BICEP_VERSION.
#
# infra/main.bicep compiles app/graph-app.bicep (the Microsoft Graph Bicep extension, dynamic
# types) whatever USE_GRAPH_EXTENSION says, and Microsoft's Graph Bicep templates need Bicep
# 0.30.3 or later; an older one fails on the `extension` line with a message that says nothing of
# versions. azure.yaml runs this as the `preprovision` hook; provision-graph-apps.sh runs it for the
# Bicep of az CLI (`check-bicep-version.sh az`).
#
# Which Bicep: AZD_BICEP_TOOL_PATH when set (azd then uses exactly that), else the one azd keeps
# in its config directory, else `bicep` on PATH. When none is there yet azd downloads its own
# on first use and there is nothing to check.
set -euo pipefail

MIN_BICEP_VERSION=0.30.3

version_of() { # a Bicep CLI command ... -> x.y.z
  "$@" --version 2>/dev/null | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -n 1
}

at_least() { # have want: true when have >= want
  [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1) == "$2" ]]
}

if [[ ${1:-} == az ]]; then
  source="az bicep"
  version=$(az bicep version 2>/dev/null | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -n 1 || true)
  advice="az bicep upgrade"
elif [[ -n ${AZD_BICEP_TOOL_PATH:-} ]]; then
  source=$AZD_BICEP_TOOL_PATH
  version=$(version_of "$AZD_BICEP_TOOL_PATH" || true)
  advice="point AZD_BICEP_TOOL_PATH at a newer bicep, or unset it to let azd use its own"
elif [[ -x ${AZD_CONFIG_DIR:-$HOME/.azd}/bin/bicep ]]; then
  source=${AZD_CONFIG_DIR:-$HOME/.azd}/bin/bicep
  version=$(version_of "$source" || true)
  advice="upgrade azd (it brings its own Bicep), or set AZD_BICEP_TOOL_PATH to a newer bicep"
elif command -v bicep >/dev/null; then
  source=$(command -v bicep)
  version=$(version_of bicep || true)
  advice="upgrade it (https://aka.ms/bicep-install)"
else
  echo "check-bicep-version: no Bicep found yet; azd downloads its own (needs ${MIN_BICEP_VERSION} or later)"
  exit 0
fi

if [[ -z $version ]]; then
  echo "check-bicep-version: could not read the version of ${source}; Bicep ${MIN_BICEP_VERSION} or later is needed" >&2
  exit 1
fi
if ! at_least "$version" "$MIN_BICEP_VERSION"; then
  echo "check-bicep-version: ${source} is Bicep ${version}; this template needs ${MIN_BICEP_VERSION} or later" >&2
  echo "  (app/graph-app.bicep, the Microsoft Graph Bicep extension). Fix: ${advice}." >&2
  exit 1
fi
echo "check-bicep-version: ${source} is Bicep ${version} (>= ${MIN_BICEP_VERSION})"
