#!/usr/bin/env bash
# Deploy the Entra app registrations (infra/app/graph-app.bicep) on their own, apart from the
# Azure resources: for an Entra admin who is not the Azure deployer, or to redo the registrations
# without touching the app. Needs az CLI signed in to the home tenant, azd, and Cloud Application
# Administrator (plus Privileged Role Administrator with --grant-home-consent).
#
#   azd env set USE_GRAPH_EXTENSION false
#   azd provision                           # identities, storage, the app (fails closed until the apps exist)
#   infra/scripts/provision-graph-apps.sh   # this file: the registrations, their ids into the azd env
#   azd up                                  # wires the ids into the app settings and App Service Authentication
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

die() { echo "provision-graph-apps: $*" >&2; exit 1; }
env_value() { azd env get-value "$1" 2>/dev/null || true; }
grant=false
[[ ${1:-} == --grant-home-consent ]] && grant=true

"$here/check-bicep-version.sh" az
rg=$(env_value AZURE_RESOURCE_GROUP)
[[ -n $rg && -n $(env_value GRAPH_IDENTITY_PRINCIPAL_ID) ]] || die "run 'azd provision' first"
[[ $(az account show --query tenantId -o tsv) == "$(env_value AZURE_TENANT_ID)" ]] ||
  die "az is signed in to another tenant: az login --tenant $(env_value AZURE_TENANT_ID)"

env_name=$(env_value AZURE_ENV_NAME)
outputs=$(az deployment group create --resource-group "$rg" --name graph-apps \
  --template-file "$here/../app/graph-app.bicep" \
  --parameters graphAppUniqueName="$(env_value GRAPH_APP_UNIQUE_NAME)" \
  graphAppDisplayName="O365 Groups Sync (${env_name})" \
  apiAppUniqueName="$(env_value API_APP_UNIQUE_NAME)" \
  apiAppDisplayName="O365 Groups Sync API (${env_name})" \
  graphIdentityPrincipalId="$(env_value GRAPH_IDENTITY_PRINCIPAL_ID)" \
  appIdentityPrincipalId="$(env_value MANAGED_IDENTITY_PRINCIPAL_ID)" \
  appBaseUrl="$(env_value APP_BASE_URL)" \
  tokenExchangeAudience="$(env_value TOKEN_EXCHANGE_AUDIENCE)" \
  grantHomeTenantConsent="$grant" \
  adminPrincipalId="$(az ad signed-in-user show --query id -o tsv 2>/dev/null || true)" \
  --query properties.outputs -o json)
output() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]]["value"])' "$1" <<<"$outputs"; }

azd env set USE_GRAPH_EXTENSION false
azd env set GRAPH_APP_CLIENT_ID "$(output graphAppClientId)"
azd env set API_APP_CLIENT_ID "$(output apiAppClientId)"
azd env set API_APP_IDENTIFIER_URI "$(output apiAppIdentifierUri)"
echo "The app registrations are in place; run 'azd up' to wire them into the app."
