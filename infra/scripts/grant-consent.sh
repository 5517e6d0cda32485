#!/usr/bin/env bash
# The app registrations of O365 Groups Sync with az CLI: the alternative to app/graph-app.bicep
# where the Microsoft Graph Bicep extension cannot be used (a Bicep or azd too old for it, a
# policy against preview extensions, a deployer allowed to run az but not the extension).
#
# What it makes (idempotent: run it again and it fixes what is missing), no secret anywhere:
#   * the Graph app: multi-tenant; Microsoft Graph application permissions GroupMember.Read.All,
#     User.Read.All, MailboxSettings.Read; its only credential is a federated identity credential
#     trusting the Function App's user-assigned managed identity.
#   * the API app: this tenant only; app role Sync.Admin; App Service Authentication signs users
#     in with it, with the same identity as its credential. The signed-in user gets Sync.Admin.
#   * admin consent for the Graph app in this (home) tenant (skip with --skip-home-consent).
#
# Use (needs az CLI signed in to the home tenant, azd, and an Entra role that may create app
# registrations; the home-tenant consent needs Privileged Role Administrator or Global Administrator):
#   azd env set USE_GRAPH_EXTENSION false
#   azd provision                        # the identity and the app; the API refuses data calls for now
#   infra/scripts/grant-consent.sh       # the registrations; stores their ids with `azd env set`
#   azd up                               # wires the ids into the app settings and App Service Authentication
#
# A customer tenant's admin consents by opening the link this prints:
#   infra/scripts/grant-consent.sh consent-link CUSTOMER_TENANT_ID
set -euo pipefail

MICROSOFT_GRAPH_APP_ID=00000003-0000-0000-c000-000000000000
GROUP_MEMBER_READ_ALL_ROLE=98830695-27a2-44f7-8c18-0c3ebc9698f6 # GroupMember.Read.All (application)
USER_READ_ALL_ROLE=df021288-bdef-4463-88db-98f22de89214         # User.Read.All (application)
MAILBOX_SETTINGS_READ_ROLE=40f97065-369a-49f4-947c-6a255697ae91 # MailboxSettings.Read (application)
USER_READ_SCOPE=e1fe6dd8-ba31-4d61-89e7-88639da4683d            # User.Read (delegated): sign-in
AZURE_CLI_APP_ID=04b07795-8ddb-461a-bbee-02f9e1bf7b46           # may ask for API tokens without a prompt
TOKEN_EXCHANGE_AUDIENCE=api://AzureADTokenExchange
GRAPH=https://graph.microsoft.com/v1.0

die() { echo "grant-consent: $*" >&2; exit 1; }
env_value() { azd env get-value "$1" 2>/dev/null || true; }
new_guid() { python3 -c 'import uuid; print(uuid.uuid4())'; }

consent_link() {
  local tenant=$1 client_id=${GRAPH_APP_CLIENT_ID:-$(env_value GRAPH_APP_CLIENT_ID)}
  [[ -n $client_id ]] || die "GRAPH_APP_CLIENT_ID is not known yet: run this script (or azd up) first"
  echo "https://login.microsoftonline.com/${tenant}/adminconsent?client_id=${client_id}"
}

if [[ ${1:-} == consent-link ]]; then
  [[ -n ${2:-} ]] || die "usage: $0 consent-link CUSTOMER_TENANT_ID"
  consent_link "$2"
  exit 0
fi

home_consent=true
[[ ${1:-} == --skip-home-consent ]] && home_consent=false

command -v az >/dev/null || die "az CLI is not installed"
TENANT_ID=${AZURE_TENANT_ID:-$(env_value AZURE_TENANT_ID)}
ENV_NAME=${AZURE_ENV_NAME:-$(env_value AZURE_ENV_NAME)}
APP_NAME=${SERVICE_API_NAME:-$(env_value SERVICE_API_NAME)}
IDENTITY_PRINCIPAL_ID=${MANAGED_IDENTITY_PRINCIPAL_ID:-$(env_value MANAGED_IDENTITY_PRINCIPAL_ID)}
[[ -n $TENANT_ID && -n $APP_NAME && -n $IDENTITY_PRINCIPAL_ID ]] ||
  die "run 'azd provision' first (AZURE_TENANT_ID, SERVICE_API_NAME and MANAGED_IDENTITY_PRINCIPAL_ID come from it)"
[[ $(az account show --query tenantId -o tsv) == "$TENANT_ID" ]] ||
  die "az is signed in to another tenant: az login --tenant $TENANT_ID"

HOST="${APP_NAME}.azurewebsites.net"
ISSUER="https://login.microsoftonline.com/${TENANT_ID}/v2.0"
GRAPH_APP_NAME="O365 Groups Sync (${ENV_NAME})"
API_APP_NAME="O365 Groups Sync API (${ENV_NAME})"
API_IDENTIFIER_URI="api://${TENANT_ID}/o365-groups-sync-api-${APP_NAME}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

app_by_name() { az ad app list --display-name "$1" --query "[0].appId" -o tsv; }
object_id() { az ad app show --id "$1" --query id -o tsv; }

ensure_service_principal() { # appId -> service principal object id
  az ad sp show --id "$1" --query id -o tsv 2>/dev/null || az ad sp create --id "$1" --query id -o tsv
}

ensure_identity_credential() { # appId: trust the Function App's managed identity
  local app_id=$1
  if [[ -z $(az ad app federated-credential list --id "$app_id" --query "[?name=='function-app-identity'].name" -o tsv) ]]; then
    cat >"$work/fic.json" <<JSON
{"name": "function-app-identity",
 "description": "The Function App's user-assigned managed identity is this app's only credential.",
 "issuer": "${ISSUER}", "subject": "${IDENTITY_PRINCIPAL_ID}", "audiences": ["${TOKEN_EXCHANGE_AUDIENCE}"]}
JSON
    az ad app federated-credential create --id "$app_id" --parameters "@$work/fic.json" >/dev/null
  fi
}

# --- the Graph app: multi-tenant, application permissions, identity as credential -------------
graph_app_id=$(app_by_name "$GRAPH_APP_NAME")
if [[ -z $graph_app_id ]]; then
  graph_app_id=$(az ad app create --display-name "$GRAPH_APP_NAME" --sign-in-audience AzureADMultipleOrgs \
    --web-redirect-uris "https://${HOST}/api/ui" --query appId -o tsv)
  echo "created the Graph app $graph_app_id"
fi
cat >"$work/graph-access.json" <<JSON
[{"resourceAppId": "${MICROSOFT_GRAPH_APP_ID}", "resourceAccess": [
  {"id": "${GROUP_MEMBER_READ_ALL_ROLE}", "type": "Role"},
  {"id": "${USER_READ_ALL_ROLE}", "type": "Role"},
  {"id": "${MAILBOX_SETTINGS_READ_ROLE}", "type": "Role"}]}]
JSON
az ad app update --id "$graph_app_id" --required-resource-accesses "@$work/graph-access.json"
ensure_identity_credential "$graph_app_id"
ensure_service_principal "$graph_app_id" >/dev/null
if $home_consent; then
  # Entra needs a moment before a new service principal can be consented to.
  for attempt in 1 2 3 4 5; do
    az ad app permission admin-consent --id "$graph_app_id" && break
    [[ $attempt == 5 ]] && die "admin consent failed; grant it later with: az ad app permission admin-consent --id $graph_app_id"
    sleep 15
  done
fi

# --- the API app: this tenant, app role Sync.Admin, identity as App Service Authentication's credential
api_app_id=$(app_by_name "$API_APP_NAME")
if [[ -z $api_app_id ]]; then
  role_id=$(new_guid)
  cat >"$work/roles.json" <<JSON
[{"id": "${role_id}", "value": "Sync.Admin", "displayName": "Sync administrator", "isEnabled": true,
  "description": "Pick groups, run refreshes, approve held removals and read the roster of every tenant in O365 Groups Sync.",
  "allowedMemberTypes": ["User", "Application"]}]
JSON
  cat >"$work/api-access.json" <<JSON
[{"resourceAppId": "${MICROSOFT_GRAPH_APP_ID}", "resourceAccess": [{"id": "${USER_READ_SCOPE}", "type": "Scope"}]}]
JSON
  api_app_id=$(az ad app create --display-name "$API_APP_NAME" --sign-in-audience AzureADMyOrg \
    --web-redirect-uris "https://${HOST}/.auth/login/aad/callback" --enable-id-token-issuance true \
    --app-roles "@$work/roles.json" --required-resource-accesses "@$work/api-access.json" \
    --identifier-uris "$API_IDENTIFIER_URI" --query appId -o tsv)
  echo "created the API app $api_app_id"
  scope_id=$(new_guid)
  api_object_id=$(object_id "$api_app_id")
  cat >"$work/scope.json" <<JSON
{"api": {"requestedAccessTokenVersion": 2, "oauth2PermissionScopes": [{"id": "${scope_id}",
  "value": "user_impersonation", "type": "User", "isEnabled": true,
  "adminConsentDisplayName": "Use O365 Groups Sync",
  "adminConsentDescription": "Call the O365 Groups Sync API as the signed-in user (the app role Sync.Admin decides what they may do).",
  "userConsentDisplayName": "Use O365 Groups Sync", "userConsentDescription": "Call the O365 Groups Sync API as you."}]}}
JSON
  az rest --method PATCH --uri "${GRAPH}/applications/${api_object_id}" --body "@$work/scope.json"
  cat >"$work/preauthorize.json" <<JSON
{"api": {"preAuthorizedApplications": [{"appId": "${AZURE_CLI_APP_ID}", "delegatedPermissionIds": ["${scope_id}"]}]}}
JSON
  az rest --method PATCH --uri "${GRAPH}/applications/${api_object_id}" --body "@$work/preauthorize.json"
fi
ensure_identity_credential "$api_app_id"
api_sp=$(ensure_service_principal "$api_app_id")
# Only users and apps holding Sync.Admin can sign in to the API at all.
az ad sp update --id "$api_app_id" --set appRoleAssignmentRequired=true
role_id=$(az ad app show --id "$api_app_id" --query "appRoles[?value=='Sync.Admin'].id | [0]" -o tsv)
me=$(az ad signed-in-user show --query id -o tsv 2>/dev/null || true)
if [[ -n $me && -z $(az rest --method GET --uri "${GRAPH}/servicePrincipals/${api_sp}/appRoleAssignedTo" \
  --query "value[?principalId=='${me}' && appRoleId=='${role_id}'].id" -o tsv) ]]; then
  az rest --method POST --uri "${GRAPH}/servicePrincipals/${api_sp}/appRoleAssignedTo" \
    --body "{\"principalId\": \"${me}\", \"resourceId\": \"${api_sp}\", \"appRoleId\": \"${role_id}\"}" >/dev/null
  echo "gave you the app role Sync.Admin"
fi
api_identifier_uri=$(az ad app show --id "$api_app_id" --query "identifierUris[0]" -o tsv)

azd env set GRAPH_APP_CLIENT_ID "$graph_app_id"
azd env set API_APP_CLIENT_ID "$api_app_id"
azd env set API_APP_IDENTIFIER_URI "$api_identifier_uri"
cat <<TEXT

Done. Now run 'azd up' so the app settings and App Service Authentication use these apps:
  GRAPH_APP_CLIENT_ID=$graph_app_id
  API_APP_CLIENT_ID=$api_app_id
  API_APP_IDENTIFIER_URI=$api_identifier_uri
A customer tenant's Global Administrator (or Privileged Role Administrator) consents at:
  https://login.microsoftonline.com/{customerTenantId}/adminconsent?client_id=$graph_app_id
TEXT
