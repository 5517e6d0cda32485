// O365 Groups Sync on Azure: a Flex Consumption Function App (Python 3.11) reading Microsoft Graph
// for many customer tenants without a single secret. `azd up` provisions this file and deploys the app.
//
//   app identity ──▶ storage (tables, queues, lock blobs, immutable audit archive; shared key off),
//        │           Application Insights (Entra ingestion), Event Grid topic (optional)
//        └─ federated credential of ─▶ API app (App Service Authentication, multi-tenant sign-in)
//   Graph identity ── federated credential of ─▶ multi-tenant Graph app ──▶ each customer's Graph
// Needs Bicep 0.30.3 or later (app/graph-app.bicep); the azd preprovision hook checks it.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment: seeds the resource token and the resource group name.')
param environmentName string

// The regions Microsoft's Flex Consumption quickstart (Azure-Samples/functions-quickstart-python-http-azd)
// allows; `az functionapp list-flexconsumption-locations` lists today's. Add one here when it appears.
@minLength(1)
@description('Region of every resource; it must offer the Flex Consumption plan.')
@allowed([
  'australiaeast'
  'australiasoutheast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northcentralus'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'southindia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'ukwest'
  'westcentralus'
  'westeurope'
  'westus'
  'westus2'
  'westus3'
])
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of whoever runs azd (AZURE_PRINCIPAL_ID): gets the Sync.Operator app role and the smoke-test queue. Empty: nobody.')
param principalId string = ''

@description('Create the Entra app registrations with the Microsoft Graph Bicep extension (app/graph-app.bicep). false: use graphAppClientId, apiAppClientId and apiAppIdentifierUri made apart (infra/scripts/provision-graph-apps.sh or grant-consent.sh). Either way this file compiles app/graph-app.bicep, so Bicep 0.30.3 is needed.')
param useGraphExtension bool = true

@description('With useGraphExtension=false: the multi-tenant Graph app.')
param graphAppClientId string = ''

@description('With useGraphExtension=false: the API app registration (app role Sync.Operator).')
param apiAppClientId string = ''

@description('With useGraphExtension=false: the API app registration\'s Application ID URI.')
param apiAppIdentifierUri string = ''

@description('Grant the Graph application permissions in this (home) tenant while deploying; needs Privileged Role Administrator or Global Administrator. Off by default: azd prints the consent link instead.')
param grantHomeTenantConsent bool = false
@description('Request Group.Read.All too, which Graph needs for group change notifications: membership changes then reach the roster within a minute instead of at night. Off by default (least privilege).')
param groupChangeNotifications bool = false

@description('Mailbox that receives the alerts (failed or held runs, failed invocations, exceptions). Empty: portal only.')
param alertEmail string = ''

@description('What App Service Authentication answers an unauthenticated request: Return401 (API clients; the page links to /.auth/login/aad) or RedirectToLoginPage.')
@allowed([
  'Return401'
  'RedirectToLoginPage'
])
param unauthenticatedAction string = 'Return401'

@description('GRAPH_CLOUD: the Microsoft Graph national cloud. Empty: follows the Azure cloud deployed to (usgovdod must be chosen explicitly). The app registrations, identities and consent live in that same cloud.')
@allowed([
  ''
  'global'
  'usgov'
  'usgovdod'
  'china'
])
param graphCloud string = ''

// The app's own settings: same names and defaults as shared/settings.py (CONTRACT.md).
@description('SYNC_QUEUE: the refresh queue (its poison queue is <name>-poison).')
param syncQueue string = 'sync-refresh'

@description('SYNC_SCHEDULE: NCRONTAB of the nightly sync (UTC).')
param syncSchedule string = '0 0 2 * * *'

@description('REMOVAL_GRACE_DAYS: days a removed user stays restorable before the purge (at least 1).')
param removalGraceDays string = '7'

@description('REMOVAL_GUARD_PERCENT: a run is held when its removals exceed this share of the active roster and REMOVAL_GUARD_MIN_USERS.')
param removalGuardPercent string = '10'

@description('REMOVAL_GUARD_MIN_USERS: see REMOVAL_GUARD_PERCENT.')
param removalGuardMinUsers string = '20'

@description('REMOVAL_GUARD_MAJORITY_PERCENT: any run removing more than this share of a roster of 2+ is held.')
param removalGuardMajorityPercent string = '50'

@description('ADMIN_ROLE_IDS: comma-separated Entra role template ids whose holders administer their own tenant. Empty: Global, Privileged Role, User and Groups Administrator.')
param adminRoleIds string = ''

@description('NOTIFY_DEBOUNCE_SECONDS: Graph change notifications for a tenant coalesce into one refresh per window.')
param notifyDebounceSeconds string = '20'

@description('AUDIT_RETENTION_DAYS: days an audit record can be neither deleted nor overwritten (container immutability).')
@minValue(1)
@maxValue(146000)
param auditRetentionDays int = 400

@description('Create an Event Grid topic for roster-change CloudEvents (EVENTS_TOPIC_ENDPOINT).')
param eventsTopic bool = false

@description('Flex Consumption: the most instances the app scales out to (one refresh per queue message).')
param maximumInstanceCount int = 40

@description('Flex Consumption: memory per instance in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

// Optional names; empty means <abbreviation><resourceToken>.
param resourceGroupName string = ''
param functionAppName string = ''
param identityName string = ''
param graphIdentityName string = ''
param storageAccountName string = ''
param appServicePlanName string = ''
param logAnalyticsName string = ''
param applicationInsightsName string = ''

var abbrs = loadJsonContent('./abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var appName = !empty(functionAppName) ? functionAppName : '${abbrs.webSitesFunctions}sync-${resourceToken}'
// The app's default host name (APP_BASE_URL): the sign-in callback and the consent redirect point
// here. The app registrations need it before the app exists, so it is spelled out per Azure cloud.
var webAppDomains = {
  AzureCloud: 'azurewebsites.net'
  AzureUSGovernment: 'azurewebsites.us'
  AzureChinaCloud: 'chinacloudsites.cn'
}
var webAppDomain = contains(webAppDomains, environment().name) ? webAppDomains[environment().name] : 'azurewebsites.net'
var appBaseUrl = 'https://${appName}.${webAppDomain}'
var deploymentStorageContainerName = 'app-package-${take(appName, 32)}-${take(toLower(uniqueString(appName, resourceToken)), 7)}'
var defaultAdminRoleIds = [
  '62e90394-69f5-4237-9190-012177145e10' // Global Administrator
  'e8611ab8-c189-46e8-94e1-60213ab1f814' // Privileged Role Administrator
  'fe930be7-5e62-47db-91af-98c3a49a38b1' // User Administrator
  'fdd7a751-b60b-444a-984c-02652fe8fa1c' // Groups Administrator
]
// Microsoft Graph national clouds: GRAPH_CLOUD and the token-exchange audience of the identities.
var cloudOfThisAzure = environment().name == 'AzureUSGovernment' ? 'usgov' : (environment().name == 'AzureChinaCloud' ? 'china' : 'global')
var resolvedGraphCloud = !empty(graphCloud) ? graphCloud : cloudOfThisAzure
var tokenExchangeAudiences = {
  global: 'api://AzureADTokenExchange'
  usgov: 'api://AzureADTokenExchangeUSGov'
  usgovdod: 'api://AzureADTokenExchangeUSGov'
  china: 'api://AzureADTokenExchangeChina'
}
// Every table of CONTRACT.md (shared/storage.py creates the newer ones itself when missing).
var syncTables = [
  'tenants'
  'selections'
  'users'
  'runs'
  'audit'
  'grants'
  'consentStates'
  'subscriptions'
  'excluded'
]
var smokeQueue = 'sync-smoke'
var syncQueues = [
  syncQueue
  '${syncQueue}-poison'
  'sync-notify'
  smokeQueue
]
// Unique names of the app registrations; infra/scripts/provision-graph-apps.sh reuses them (outputs).
var graphAppUniqueName = 'o365-groups-sync-graph-${resourceToken}'
var apiAppUniqueName = 'o365-groups-sync-api-${resourceToken}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

// The app identity: storage, Application Insights ingestion, Event Grid, and (as a federated
// credential) App Service Authentication's client assertion for the API app.
module identity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1' = {
  name: 'identity'
  scope: rg
  params: {
    name: !empty(identityName) ? identityName : '${abbrs.managedIdentityUserAssignedIdentities}sync-${resourceToken}'
    location: location
    tags: tags
  }
}

// The Graph identity: only the federated credential of the Graph app. No Azure role at all, so a
// leak of its tokens reaches customer directories (read-only) and nothing in this subscription.
module graphIdentity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1' = {
  name: 'graph-identity'
  scope: rg
  params: {
    name: !empty(graphIdentityName) ? graphIdentityName : '${abbrs.managedIdentityUserAssignedIdentities}graph-${resourceToken}'
    location: location
    tags: tags
  }
}

module logAnalytics 'br/public:avm/res/operational-insights/workspace:0.7.0' = {
  name: 'loganalytics'
  scope: rg
  params: {
    name: !empty(logAnalyticsName) ? logAnalyticsName : '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    location: location
    tags: tags
    dataRetention: 30
  }
}

// Local (instrumentation key) auth off: telemetry is accepted only with an Entra token of an
// identity holding Monitoring Metrics Publisher (app/rbac.bicep).
module monitoring 'br/public:avm/res/insights/component:0.4.1' = {
  name: 'appinsights'
  scope: rg
  params: {
    name: !empty(applicationInsightsName) ? applicationInsightsName : '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
    workspaceResourceId: logAnalytics.outputs.resourceId
    disableLocalAuth: true
  }
}

// Declared natively rather than through the AVM module so that checkov can see and check it.
module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: !empty(storageAccountName) ? storageAccountName : '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentStorageContainerName
    tableNames: syncTables
    queueNames: syncQueues
    auditRetentionDays: auditRetentionDays
    logAnalyticsWorkspaceId: logAnalytics.outputs.resourceId
  }
}

module appServicePlan 'br/public:avm/res/web/serverfarm:0.1.1' = {
  name: 'appserviceplan'
  scope: rg
  params: {
    name: !empty(appServicePlanName) ? appServicePlanName : '${abbrs.webServerFarms}${resourceToken}'
    sku: {
      name: 'FC1'
      tier: 'FlexConsumption'
    }
    reserved: true
    location: location
    tags: tags
  }
}

// Entra app registrations through the Microsoft Graph Bicep extension. That file is the only
// one checkov cannot parse (it does not know the `extension` keyword); see infra/README.md.
module graphAppRegistrations 'app/graph-app.bicep' = if (useGraphExtension) {
  name: 'graph-apps'
  scope: rg
  params: {
    graphAppUniqueName: graphAppUniqueName
    graphAppDisplayName: 'O365 Groups Sync (${environmentName})'
    apiAppUniqueName: apiAppUniqueName
    apiAppDisplayName: 'O365 Groups Sync API (${environmentName})'
    graphIdentityPrincipalId: graphIdentity.outputs.principalId
    appIdentityPrincipalId: identity.outputs.principalId
    appBaseUrl: appBaseUrl
    tokenExchangeAudience: tokenExchangeAudiences[resolvedGraphCloud]
    grantHomeTenantConsent: grantHomeTenantConsent
    adminPrincipalId: principalId
    groupChangeNotifications: groupChangeNotifications
  }
}

var resolvedGraphAppClientId = useGraphExtension ? graphAppRegistrations.outputs.graphAppClientId : graphAppClientId
var resolvedApiAppClientId = useGraphExtension ? graphAppRegistrations.outputs.apiAppClientId : apiAppClientId
var resolvedApiAppIdentifierUri = useGraphExtension ? graphAppRegistrations.outputs.apiAppIdentifierUri : apiAppIdentifierUri

module events 'app/events.bicep' = if (eventsTopic) {
  name: 'events'
  scope: rg
  params: {
    name: '${abbrs.eventGridTopics}sync-${resourceToken}'
    location: location
    tags: tags
    identityPrincipalId: identity.outputs.principalId
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: appName
    location: location
    tags: tags
    appServicePlanId: appServicePlan.outputs.resourceId
    identityId: identity.outputs.resourceId
    identityClientId: identity.outputs.clientId
    graphIdentityId: graphIdentity.outputs.resourceId
    graphIdentityClientId: graphIdentity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentStorageContainerName: deploymentStorageContainerName
    applicationInsightsName: monitoring.outputs.name
    logAnalyticsWorkspaceId: logAnalytics.outputs.resourceId
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    graphAppClientId: resolvedGraphAppClientId
    graphCloud: resolvedGraphCloud
    syncQueue: syncQueue
    syncSchedule: syncSchedule
    removalGraceDays: removalGraceDays
    removalGuardPercent: removalGuardPercent
    removalGuardMinUsers: removalGuardMinUsers
    removalGuardMajorityPercent: removalGuardMajorityPercent
    adminRoleIds: !empty(adminRoleIds) ? adminRoleIds : join(defaultAdminRoleIds, ',')
    notifyDebounceSeconds: notifyDebounceSeconds
    auditContainerName: storage.outputs.auditContainerName
    auditRetentionDays: auditRetentionDays
    eventsTopicEndpoint: eventsTopic ? events.outputs.endpoint : ''
    authClientId: resolvedApiAppClientId
    authIdentifierUri: resolvedApiAppIdentifierUri
    unauthenticatedAction: unauthenticatedAction
  }
}

// Roles of the app identity only; the Graph identity has none.
module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.name
    identityPrincipalId: identity.outputs.principalId
    smokeQueueName: smokeQueue
    deployerPrincipalId: principalId
  }
}

module alerts 'app/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    namePrefix: '${abbrs.insightsScheduledQueryRules}sync-'
    nameSuffix: resourceToken
    actionGroupName: '${abbrs.insightsActionGroups}sync-${resourceToken}'
    location: location
    tags: tags
    logAnalyticsWorkspaceId: logAnalytics.outputs.resourceId
    alertEmail: alertEmail
  }
}

module workbook 'app/workbook.bicep' = {
  name: 'workbook'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsWorkspaceId: logAnalytics.outputs.resourceId
  }
}

// azd writes these into .azure/<env>/.env; the README's commands, the hooks and scripts/smoke.sh read them.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_NAME string = api.outputs.name
output SERVICE_API_NAME string = api.outputs.name
output SERVICE_API_URI string = 'https://${api.outputs.defaultHostName}'
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output SMOKE_QUEUE string = smokeQueue
output MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output MANAGED_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output GRAPH_IDENTITY_CLIENT_ID string = graphIdentity.outputs.clientId
output GRAPH_IDENTITY_PRINCIPAL_ID string = graphIdentity.outputs.principalId
output GRAPH_CLOUD string = resolvedGraphCloud
output GRAPH_APP_UNIQUE_NAME string = graphAppUniqueName
output API_APP_UNIQUE_NAME string = apiAppUniqueName
output APP_BASE_URL string = appBaseUrl
output TOKEN_EXCHANGE_AUDIENCE string = tokenExchangeAudiences[resolvedGraphCloud]
output GRAPH_APP_CLIENT_ID string = resolvedGraphAppClientId
output API_APP_CLIENT_ID string = resolvedApiAppClientId
output API_APP_IDENTIFIER_URI string = resolvedApiAppIdentifierUri
output ADMIN_CONSENT_URL_TEMPLATE string = '${environment().authentication.loginEndpoint}{customerTenantId}/adminconsent?client_id=${resolvedGraphAppClientId}'
output HOME_TENANT_CONSENT_URL string = '${environment().authentication.loginEndpoint}${tenant().tenantId}/adminconsent?client_id=${resolvedGraphAppClientId}'
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.name
output LOG_ANALYTICS_WORKSPACE_ID string = logAnalytics.outputs.resourceId
output WORKBOOK_ID string = workbook.outputs.id
