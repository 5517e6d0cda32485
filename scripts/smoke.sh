#!/usr/bin/env bash
# Post-deploy smoke test: after `azd up`, check what README "Deploy to Azure" promises, in that order.
#   1. /api/health answers 200 without sign-in;
#   2. a data route (/api/tenants) answers 401 without sign-in (App Service Authentication is on);
#   3. the functions are listed, the nightly timer (nightly_sync) among them;
#   4. a queue round trip: a message put on the smoke queue with Entra ID (--auth-mode login; no
#      key exists) is read back and deleted;
#   5. optional, with SMOKE_TENANT_ID (a connected tenant) and a token for the API: a dry-run
#      preview of its saved selection goes through the refresh queue and the worker and finishes.
# Reads the azd environment (azd env get-value); run from the repo root: scripts/smoke.sh
# Exit 0: every check passed. Exit 1: the first failed check says what to look at.
set -euo pipefail

die() { echo "smoke: FAIL: $*" >&2; exit 1; }
ok() { echo "smoke: ok: $*"; }
env_value() {
  local value=${!1:-}
  [[ -n $value ]] || value=$(azd env get-value "$1" 2>/dev/null || true)
  echo "$value"
}

API=$(env_value SERVICE_API_URI)
RG=$(env_value AZURE_RESOURCE_GROUP)
APP=$(env_value AZURE_FUNCTION_NAME)
STORAGE=$(env_value AZURE_STORAGE_ACCOUNT_NAME)
QUEUE=$(env_value SMOKE_QUEUE)
[[ -n $API && -n $RG && -n $APP && -n $STORAGE && -n $QUEUE ]] ||
  die "SERVICE_API_URI, AZURE_RESOURCE_GROUP, AZURE_FUNCTION_NAME, AZURE_STORAGE_ACCOUNT_NAME and SMOKE_QUEUE come from 'azd up'"
command -v az >/dev/null || die "az CLI is not installed"

status_of() { # URL -> HTTP status, retried while the app cold-starts (5xx or no answer)
  local code attempt
  for attempt in 1 2 3 4 5 6; do
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 30 "$1" || echo 000)
    [[ $code == 000 || $code == 5?? ]] || break
    sleep $((attempt * 5))
  done
  echo "$code"
}

# 1. Liveness, anonymous.
code=$(status_of "$API/api/health")
[[ $code == 200 ]] || die "GET /api/health answered $code, not 200 (is the app deployed? 'azd deploy')"
ok "GET /api/health 200"

# 2. App Service Authentication in front of the data routes.
code=$(status_of "$API/api/tenants")
[[ $code == 401 ]] || die "GET /api/tenants without sign-in answered $code, not 401 (is App Service Authentication on?)"
ok "GET /api/tenants without sign-in 401"

# 3. The functions the host indexed, the nightly timer among them.
functions=$(az functionapp function list --resource-group "$RG" --name "$APP" --query "[].name" -o tsv)
for name in nightly_sync refresh_worker refresh_poison health; do
  grep -Eq "(^|/)${name}\$" <<<"$functions" || die "function $name is not listed (az functionapp function list): did the worker index function_app.py?"
done
ok "functions listed, nightly_sync among them"

# 4. Queue round trip with Entra ID (the deployer holds Storage Queue Data Contributor on this queue only).
text="smoke-$(date +%s)-$RANDOM"
queue_args=(--queue-name "$QUEUE" --account-name "$STORAGE" --auth-mode login)
for attempt in 1 2 3 4 5 6; do # a fresh role assignment takes a few minutes to apply
  az storage message put "${queue_args[@]}" --content "$text" --output none 2>/dev/null && break
  [[ $attempt == 6 ]] && die "could not put a message on queue $QUEUE of $STORAGE with Entra ID"
  sleep 20
done
read -r id receipt content < <(az storage message get "${queue_args[@]}" --visibility-timeout 60 \
  --query "[0].[id, popReceipt, content]" -o tsv) || true
[[ ${content:-} == "$text" ]] || die "queue $QUEUE gave back '${content:-nothing}', not the message put on it"
az storage message delete "${queue_args[@]}" --id "$id" --pop-receipt "$receipt" --output none
ok "queue round trip on $QUEUE"

# 5. Optional: a dry run through the app's own queue and worker.
if [[ -n ${SMOKE_TENANT_ID:-} ]]; then
  scope="$(env_value API_APP_IDENTIFIER_URI)/user_impersonation"
  token=$(az account get-access-token --scope "$scope" --query accessToken -o tsv)
  auth=(-H "Authorization: Bearer $token" -H "Content-Type: application/json")
  selection=$(curl -sS --fail-with-body "${auth[@]}" "$API/api/tenants/$SMOKE_TENANT_ID/selection") ||
    die "GET /api/tenants/$SMOKE_TENANT_ID/selection failed: $selection"
  body=$(python3 -c 'import json,sys; s=json.load(sys.stdin); print(json.dumps({"mode": s["mode"], "groupIds": [g["id"] for g in s["groups"]]}))' <<<"$selection")
  run=$(curl -sS --fail-with-body "${auth[@]}" -X POST -d "$body" "$API/api/tenants/$SMOKE_TENANT_ID/preview") ||
    die "POST /api/tenants/$SMOKE_TENANT_ID/preview failed: $run"
  run_id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$run")
  for attempt in $(seq 1 30); do
    status=$(curl -sS "${auth[@]}" "$API/api/tenants/$SMOKE_TENANT_ID/runs/$run_id" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
    [[ $status == queued || $status == running ]] || break
    [[ $attempt == 30 ]] && die "dry run $run_id still $status after 5 minutes: is refresh_worker picking up the queue?"
    sleep 10
  done
  [[ $status == succeeded || $status == held ]] || die "dry run $run_id ended $status (GET /api/tenants/$SMOKE_TENANT_ID/runs/$run_id)"
  ok "dry run $run_id of $SMOKE_TENANT_ID ended $status"
fi
echo "smoke: all checks passed for $API"
