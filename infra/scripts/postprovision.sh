#!/usr/bin/env bash
# azd `postprovision` hook: print what an operator does next, with the links filled in. azd passes
# the azd environment (main.bicep's outputs) as environment variables.
set -euo pipefail

graph_app=${GRAPH_APP_CLIENT_ID:-}
if [[ -z $graph_app ]]; then
  cat <<TEXT

O365 Groups Sync: no app registrations yet (USE_GRAPH_EXTENSION=false). Make them apart:
  infra/scripts/provision-graph-apps.sh      # the Bicep file alone, e.g. run by an Entra admin
  infra/scripts/grant-consent.sh             # or the same with az CLI
then run 'azd up' again. Until then the API refuses every data request.
TEXT
  exit 0
fi

cat <<TEXT

O365 Groups Sync is provisioned: ${SERVICE_API_URI:-}
Grant the Microsoft Graph permissions (GroupMember.Read.All, User.Read.All, Member.Read.Hidden,
MailboxSettings.Read) as a Global Administrator or Privileged Role Administrator of each tenant:
TEXT
if [[ ${GRANT_HOME_TENANT_CONSENT:-false} == true ]]; then
  echo "  your own tenant:  granted while deploying (GRANT_HOME_TENANT_CONSENT=true)"
else
  echo "  your own tenant:  ${HOME_TENANT_CONSENT_URL:-}"
fi
cat <<TEXT
  a customer tenant: ${ADMIN_CONSENT_URL_TEMPLATE:-} (replace {customerTenantId})
After 'azd deploy' (or 'azd up'), check the deployment: scripts/smoke.sh
TEXT
