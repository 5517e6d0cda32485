#!/usr/bin/env bash
# The app registrations of O365 Groups Sync with az CLI: the alternative to app/graph-app.bicep
# where the Microsoft Graph Bicep extension cannot be used (a policy against it, a sovereign cloud
# without it, an Entra admin who runs az but not Bicep).
#
# What it makes (idempotent: run it again and it fixes what is missing), no secret anywhere:
#   * the Graph app: multi-tenant; Microsoft Graph application permissions GroupMember.Read.All,
#     User.Read.All, Member.Read.Hidden, MailboxSettings.Read; its only credential is a federated
#     identity credential trusting the Function App's Graph identity; redirect URIs for the
#     admin-consent link (/api/ui, /api/consent/callback).
#   * the API app: multi-tenant sign-in; app role Sync.Operator; wids in its tokens; App Service
#     Authentication signs users in with it, with the app identity as its credential; tenant-wide
#     consent to the sign-in scopes (User.Read openid profile email) in this tenant. The signed-in
#     user gets Sync.Operator.
#   * only with --grant-home-consent (or GRANT_HOME_TENANT_CONSENT=true): admin consent for the
#     Graph app in this (home) tenant; needs Privileged Role Administrator or Global Administrator.
#
# Use (needs az CLI signed in to the home tenant, azd, and Cloud Application Administrator):
#   azd env set USE_GRAPH_EXTENSION false
#   azd provision                        # identities and the app; the API refuses data calls for now
#   infra/scripts/grant-consent.sh       # the registrations; stores their ids with `azd env set`
#   azd up                               # wires the ids into the app settings and App Service Authentication
#
# A customer tenant's admin consents by opening the link this prints:
#   infra/scripts/grant-consent.sh consent-link CUSTOMER_TENANT_ID
set -euo pipefail

MICROSOFT_GRAPH_APP_ID=00000003-0000-0000-c000-000000000000
GROUP_MEMBER_READ_ALL_ROLE=98830695-27a2-44f7-8c18-0c3ebc9698f6 # GroupMember.Read.All (application)
USER_READ_ALL_ROLE=df021288-bdef-4463-88db-98f22de89214         # User.Read.All (application)
MEMBER_READ_HIDDEN_ROLE=658aa5d8-239f-45c4-aa12-864f4fc7e490    # Member.Read.Hidden (application)
MAILBOX_SETTINGS_READ_ROLE=40f97065-369a-49f4-947c-6a255697ae91 # MailboxSettings.Read (application)
GROUP_READ_ALL_ROLE=5b567255-7703-4780-807c-7be8301ae99b        # Group.Read.All (application): opt-in, GROUP_CHANGE_NOTIFICATIONS=true
USER_READ_SCOPE=e1fe6dd8-ba31-4d61-89e7-88639da4683d            # User.Read (delegated): sign-in
OPENID_SCOPE=37f7f235-527c-4136-accd-4a02d197296e               # openid (delegated): sign-in
PROFILE_SCOPE=14dad69e-099b-42c9-810b-d002981feec1              # profile (delegated): sign-in
EMAIL_SCOPE=64a6cdd6-aab1-4aaf-94b8-3cc8405e90d0                # email (delegated): sign-in
SIGN_IN_SCOPES="User.Read openid profile email"
AZURE_CLI_APP_ID=04b07795-8ddb-461a-bbee-02f9e1bf7b46           # may ask for API tokens without a prompt

die() { echo "grant-consent: $*" >&2; exit 1; }
env_value() { azd env get-value "$1" 2>/dev/null || true; }
new_guid() { python3 -c 'import uuid; print(uuid.uuid4())'; }

# GRAPH_CLOUD (global, usgov, usgovdod, china) decides the Graph endpoint and the token-exchange
# audience; the sign-in host is the one of the cloud az is signed in to.
GRAPH_CLOUD=${GRAPH_CLOUD:-$(env_value GRAPH_CLOUD)}
case ${GRAPH_CLOUD:-global} in
  global) GRAPH_ROOT=https://graph.microsoft.com TOKEN_EXCHANGE_AUDIENCE=api://AzureADTokenExchange ;;
  usgov) GRAPH_ROOT=https://graph.microsoft.us TOKEN_EXCHANGE_AUDIENCE=api://AzureADTokenExchangeUSGov ;;
  usgovdod) GRAPH_ROOT=https://dod-graph.microsoft.us TOKEN_EXCHANGE_AUDIENCE=api://AzureADTokenExchangeUSGov ;;
  china) GRAPH_ROOT=https://microsoftgraph.chinacloudapi.cn TOKEN_EXCHANGE_AUDIENCE=api://AzureADTokenExchangeChina ;;
  *) die "GRAPH_CLOUD must be global, usgov, usgovdod or china (got '$GRAPH_CLOUD')" ;;
esac
GRAPH="${GRAPH_ROOT}/v1.0"
login_host() { # https://login.microsoftonline.com and its national twins, from az's cloud
  local host
  host=$(az cloud show --query endpoints.activeDirectory -o tsv 2>/dev/null || true)
  host=${host:-https://login.microsoftonline.com}
  echo "${host%/}"
}

consent_link() {
  local tenant=$1 client_id=${GRAPH_APP_CLIENT_ID:-$(env_value GRAPH_APP_CLIENT_ID)}
  [[ -n $client_id ]] || die "GRAPH_APP_CLIENT_ID is not known yet: run this script (or azd up) first"
  echo "$(login_host)/${tenant}/adminconsent?client_id=${client_id}"
}

if [[ ${1:-} == consent-link ]]; then
  [[ -n ${2:-} ]] || die "usage: $0 consent-link CUSTOMER_TENANT_ID"
  consent_link "$2"
  exit 0
fi

home_consent=${GRANT_HOME_TENANT_CONSENT:-$(env_value GRANT_HOME_TENANT_CONSENT)}
[[ ${1:-} == --grant-home-consent ]] && home_consent=true
[[ ${home_consent:-false} == true ]] || home_consent=false

command -v az >/dev/null || die "az CLI is not installed"
TENANT_ID=${AZURE_TENANT_ID:-$(env_value AZURE_TENANT_ID)}
ENV_NAME=${AZURE_ENV_NAME:-$(env_value AZURE_ENV_NAME)}
APP_BASE_URL=${APP_BASE_URL:-$(env_value APP_BASE_URL)}
APP_IDENTITY_PRINCIPAL_ID=${MANAGED_IDENTITY_PRINCIPAL_ID:-$(env_value MANAGED_IDENTITY_PRINCIPAL_ID)}
GRAPH_IDENTITY_PRINCIPAL_ID=${GRAPH_IDENTITY_PRINCIPAL_ID:-$(env_value GRAPH_IDENTITY_PRINCIPAL_ID)}
API_APP_UNIQUE_NAME=${API_APP_UNIQUE_NAME:-$(env_value API_APP_UNIQUE_NAME)}
[[ -n $TENANT_ID && -n $APP_BASE_URL && -n $APP_IDENTITY_PRINCIPAL_ID && -n $GRAPH_IDENTITY_PRINCIPAL_ID && -n $API_APP_UNIQUE_NAME ]] ||
  die "run 'azd provision' first (AZURE_TENANT_ID, APP_BASE_URL, MANAGED_IDENTITY_PRINCIPAL_ID, GRAPH_IDENTITY_PRINCIPAL_ID, API_APP_UNIQUE_NAME come from it)"
[[ $(az account show --query tenantId -o tsv) == "$TENANT_ID" ]] ||
  die "az is signed in to another tenant: az login --tenant $TENANT_ID"

ISSUER="$(login_host)/${TENANT_ID}/v2.0"
GRAPH_APP_NAME="O365 Groups Sync (${ENV_NAME})"
API_APP_NAME="O365 Groups Sync API (${ENV_NAME})"
API_IDENTIFIER_URI="api://${TENANT_ID}/${API_APP_UNIQUE_NAME}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

app_by_name() { az ad app list --display-name "$1" --query "[0].appId" -o tsv; }
object_id() { az ad app show --id "$1" --query id -o tsv; }

ensure_service_principal() { # appId -> service principal object id
  az ad sp show --id "$1" --query id -o tsv 2>/dev/null || az ad sp create --id "$1" --query id -o tsv
}

ensure_identity_credential() { # appId credentialName identityPrincipalId: trust a managed identity
  local app_id=$1 name=$2 subject=$3
  if [[ -z $(az ad app federated-credential list --id "$app_id" --query "[?name=='${name}'].name" -o tsv) ]]; then
    cat >"$work/fic.json" <<JSON
{"name": "${name}", "description": "A user-assigned managed identity of the Function App is this app's only credential.",
 "issuer": "${ISSUER}", "subject": "${subject}", "audiences": ["${TOKEN_EXCHANGE_AUDIENCE}"]}
JSON
    az ad app federated-credential create --id "$app_id" --parameters "@$work/fic.json" >/dev/null
  fi
}

# --- the Graph app: multi-tenant, application permissions, the Graph identity as credential ----
graph_app_id=$(app_by_name "$GRAPH_APP_NAME")
if [[ -z $graph_app_id ]]; then
  graph_app_id=$(az ad app create --display-name "$GRAPH_APP_NAME" --sign-in-audience AzureADMultipleOrgs \
    --query appId -o tsv)
  echo "created the Graph app $graph_app_id"
fi
az ad app update --id "$graph_app_id" --web-redirect-uris "${APP_BASE_URL}/api/ui" "${APP_BASE_URL}/api/consent/callback"
# Group change notifications need Group.Read.All (Graph's "Create subscription"): opt-in only.
group_notifications=""
if [[ ${GROUP_CHANGE_NOTIFICATIONS:-$(env_value GROUP_CHANGE_NOTIFICATIONS)} == true ]]; then
  group_notifications=",
  {\"id\": \"${GROUP_READ_ALL_ROLE}\", \"type\": \"Role\"}"
fi
cat >"$work/graph-access.json" <<JSON
[{"resourceAppId": "${MICROSOFT_GRAPH_APP_ID}", "resourceAccess": [
  {"id": "${GROUP_MEMBER_READ_ALL_ROLE}", "type": "Role"},
  {"id": "${USER_READ_ALL_ROLE}", "type": "Role"},
  {"id": "${MEMBER_READ_HIDDEN_ROLE}", "type": "Role"},
  {"id": "${MAILBOX_SETTINGS_READ_ROLE}", "type": "Role"}${group_notifications}]}]
JSON
az ad app update --id "$graph_app_id" --required-resource-accesses "@$work/graph-access.json"
ensure_identity_credential "$graph_app_id" graph-identity "$GRAPH_IDENTITY_PRINCIPAL_ID"
ensure_service_principal "$graph_app_id" >/dev/null
if $home_consent; then
  # Entra needs a moment before a new service principal can be consented to.
  for attempt in 1 2 3 4 5; do
    az ad app permission admin-consent --id "$graph_app_id" && break
    [[ $attempt == 5 ]] && die "admin consent failed; grant it later with: az ad app permission admin-consent --id $graph_app_id"
    sleep 15
  done
fi

# --- the API app: multi-tenant sign-in, app role Sync.Operator, the app identity as credential --
api_app_id=$(app_by_name "$API_APP_NAME")
if [[ -z $api_app_id ]]; then
  role_id=$(new_guid)
  cat >"$work/roles.json" <<JSON
[{"id": "${role_id}", "value": "Sync.Operator", "displayName": "Sync operator", "isEnabled": true,
  "description": "Operate O365 Groups Sync for every connected tenant: connect tenants, pick groups, run refreshes, approve held removals, read rosters.",
  "allowedMemberTypes": ["User", "Application"]}]
JSON
  api_app_id=$(az ad app create --display-name "$API_APP_NAME" --sign-in-audience AzureADMultipleOrgs \
    --web-redirect-uris "${APP_BASE_URL}/.auth/login/aad/callback" --enable-id-token-issuance true \
    --app-roles "@$work/roles.json" --identifier-uris "$API_IDENTIFIER_URI" --query appId -o tsv)
  echo "created the API app $api_app_id"
  scope_id=$(new_guid)
  api_object_id=$(object_id "$api_app_id")
  cat >"$work/scope.json" <<JSON
{"api": {"requestedAccessTokenVersion": 2, "oauth2PermissionScopes": [{"id": "${scope_id}",
  "value": "user_impersonation", "type": "User", "isEnabled": true,
  "adminConsentDisplayName": "Use O365 Groups Sync",
  "adminConsentDescription": "Call the O365 Groups Sync API as the signed-in user (their role decides what they may do).",
  "userConsentDisplayName": "Use O365 Groups Sync", "userConsentDescription": "Call the O365 Groups Sync API as you."}]}}
JSON
  az rest --method PATCH --uri "${GRAPH}/applications/${api_object_id}" --body "@$work/scope.json"
  cat >"$work/preauthorize.json" <<JSON
{"api": {"preAuthorizedApplications": [{"appId": "${AZURE_CLI_APP_ID}", "delegatedPermissionIds": ["${scope_id}"]}]}}
JSON
  az rest --method PATCH --uri "${GRAPH}/applications/${api_object_id}" --body "@$work/preauthorize.json"
fi
cat >"$work/api-access.json" <<JSON
[{"resourceAppId": "${MICROSOFT_GRAPH_APP_ID}", "resourceAccess": [
  {"id": "${USER_READ_SCOPE}", "type": "Scope"}, {"id": "${OPENID_SCOPE}", "type": "Scope"},
  {"id": "${PROFILE_SCOPE}", "type": "Scope"}, {"id": "${EMAIL_SCOPE}", "type": "Scope"}]}]
JSON
# Multi-tenant sign-in with wids (directory roles) in the tokens: the code admits customer admins by them.
az ad app update --id "$api_app_id" --sign-in-audience AzureADMultipleOrgs --set groupMembershipClaims=DirectoryRole \
  --required-resource-accesses "@$work/api-access.json"
ensure_identity_credential "$api_app_id" app-identity "$APP_IDENTITY_PRINCIPAL_ID"
api_sp=$(ensure_service_principal "$api_app_id")
# In this tenant only holders of Sync.Operator can sign in at all.
az ad sp update --id "$api_app_id" --set appRoleAssignmentRequired=true
# Tenant-wide consent to the sign-in scopes (operators are not asked at their first sign-in).
az ad app permission grant --id "$api_app_id" --api "$MICROSOFT_GRAPH_APP_ID" --scope "$SIGN_IN_SCOPES" >/dev/null
role_id=$(az ad app show --id "$api_app_id" --query "appRoles[?value=='Sync.Operator'].id | [0]" -o tsv)
me=$(az ad signed-in-user show --query id -o tsv 2>/dev/null || true)
if [[ -n $me && -n $role_id && -z $(az rest --method GET --uri "${GRAPH}/servicePrincipals/${api_sp}/appRoleAssignedTo" \
  --query "value[?principalId=='${me}' && appRoleId=='${role_id}'].id" -o tsv) ]]; then
  az rest --method POST --uri "${GRAPH}/servicePrincipals/${api_sp}/appRoleAssignedTo" \
    --body "{\"principalId\": \"${me}\", \"resourceId\": \"${api_sp}\", \"appRoleId\": \"${role_id}\"}" >/dev/null
  echo "gave you the app role Sync.Operator"
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
Your own tenant's Graph consent (a Privileged Role Administrator or Global Administrator):
  $(consent_link "$TENANT_ID")
A customer tenant's Global Administrator (or Privileged Role Administrator) consents at:
  $(login_host)/{customerTenantId}/adminconsent?client_id=$graph_app_id
TEXT
