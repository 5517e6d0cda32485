// O365 Groups Sync on Azure: a Flex Consumption Function App (Python 3.11) reading Microsoft Graph
// for many customer tenants without a single secret. `azd up` provisions this file and deploys the app.
//
//   user-assigned identity ──▶ storage (tables, refresh queue, host blobs; shared key off)
//            │                 Application Insights (Entra ingestion) on Log Analytics
//            └─ federated credential of ─▶ multi-tenant Graph app ──▶ each customer tenant's Graph
//   App Service Authentication (Entra ID, app role Sync.Admin) in front of every data route
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment: seeds the resource token and the resource group name.')
param environmentName string

@minLength(1)
@description('Region of every resource. Pick one that offers the Flex Consumption plan (az functionapp list-flexconsumption-locations).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of whoever runs azd (AZURE_PRINCIPAL_ID): gets the Sync.Admin app role so they can use the API at once. Empty: nobody is assigned.')
param principalId string = ''

@description('Create the Entra app registrations with the Microsoft Graph Bicep extension (app/graph-app.bicep). false: use graphAppClientId, apiAppClientId and apiAppIdentifierUri made by infra/scripts/grant-consent.sh.')
param useGraphExtension bool = true

@description('With useGraphExtension=false: the multi-tenant Graph app made by infra/scripts/grant-consent.sh.')
param graphAppClientId string = ''

@description('With useGraphExtension=false: the API app registration (Sync.Admin app role) made by infra/scripts/grant-consent.sh.')
param apiAppClientId string = ''

@description('With useGraphExtension=false: the API app registration\'s Application ID URI.')
param apiAppIdentifierUri string = ''

@description('Grant the Graph application permissions in this (home) tenant while deploying; needs Privileged Role Administrator or Global Administrator. Customer tenants always consent through the admin-consent link.')
param grantHomeTenantConsent bool = true

@description('Mailbox that receives the failed/held run alert. Empty: the alert fires in the portal only.')
param alertEmail string = ''

@description('What App Service Authentication answers an unauthenticated request: Return401 (API clients; the page links to /.auth/login/aad) or RedirectToLoginPage.')
@allowed([
  'Return401'
  'RedirectToLoginPage'
])
param unauthenticatedAction string = 'Return401'

// The app's own settings: same names and defaults as shared/settings.py.
@description('GRAPH_BASE_URL: the Microsoft Graph root.')
param graphBaseUrl string = 'https://graph.microsoft.com/v1.0'

@description('SYNC_QUEUE: the refresh queue (its poison queue is <name>-poison).')
param syncQueue string = 'sync-refresh'

@description('SYNC_SCHEDULE: NCRONTAB of the nightly sync (UTC).')
param syncSchedule string = '0 0 2 * * *'

@description('REMOVAL_GRACE_DAYS: days a removed user stays restorable before the purge.')
param removalGraceDays string = '7'

@description('REMOVAL_GUARD_PERCENT: a run is held when its removals exceed this share of the active roster and REMOVAL_GUARD_MIN_USERS.')
param removalGuardPercent string = '10'

@description('REMOVAL_GUARD_MIN_USERS: see REMOVAL_GUARD_PERCENT.')
param removalGuardMinUsers string = '20'

@description('Flex Consumption: the most instances the app scales out to (one refresh per queue message).')
param maximumInstanceCount int = 40

@description('Flex Consumption: memory per instance (2048 or 4096 MB).')
param instanceMemoryMB int = 2048

// Optional names; empty means <abbreviation><resourceToken>.
param resourceGroupName string = ''
param functionAppName string = ''
param identityName string = ''
param storageAccountName string = ''
param appServicePlanName string = ''
param logAnalyticsName string = ''
param applicationInsightsName string = ''

var abbrs = loadJsonContent('./abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var appName = !empty(functionAppName) ? functionAppName : '${abbrs.webSitesFunctions}sync-${resourceToken}'
// The app's default host name: App Authentication's callback and the consent redirect point here.
var appHostName = '${appName}.azurewebsites.net'
var deploymentStorageContainerName = 'app-package-${take(appName, 32)}-${take(toLower(uniqueString(appName, resourceToken)), 7)}'
// The tables shared/storage.py uses (ALL_TABLES) and the refresh queue with its poison queue.
var syncTables = [
  'tenants'
  'selections'
  'users'
  'runs'
]
var syncQueues = [
  syncQueue
  '${syncQueue}-poison'
]

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

// The app's one identity: storage, Application Insights ingestion, and (as a federated
// credential) the multi-tenant Graph app and App Service Authentication's client assertion.
module identity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1' = {
  name: 'identity'
  scope: rg
  params: {
    name: !empty(identityName) ? identityName : '${abbrs.managedIdentityUserAssignedIdentities}sync-${resourceToken}'
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
module graphApps 'app/graph-app.bicep' = if (useGraphExtension) {
  name: 'graph-apps'
  scope: rg
  params: {
    graphAppUniqueName: 'o365-groups-sync-graph-${resourceToken}'
    graphAppDisplayName: 'O365 Groups Sync (${environmentName})'
    apiAppUniqueName: 'o365-groups-sync-api-${resourceToken}'
    apiAppDisplayName: 'O365 Groups Sync API (${environmentName})'
    identityPrincipalId: identity.outputs.principalId
    appHostName: appHostName
    grantHomeTenantConsent: grantHomeTenantConsent
    adminPrincipalId: principalId
  }
}

var resolvedGraphAppClientId = useGraphExtension ? graphApps.outputs.graphAppClientId : graphAppClientId
var resolvedApiAppClientId = useGraphExtension ? graphApps.outputs.apiAppClientId : apiAppClientId
var resolvedApiAppIdentifierUri = useGraphExtension ? graphApps.outputs.apiAppIdentifierUri : apiAppIdentifierUri

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
    storageAccountName: storage.outputs.name
    deploymentStorageContainerName: deploymentStorageContainerName
    applicationInsightsName: monitoring.outputs.name
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    graphAppClientId: resolvedGraphAppClientId
    graphBaseUrl: graphBaseUrl
    syncQueue: syncQueue
    syncSchedule: syncSchedule
    removalGraceDays: removalGraceDays
    removalGuardPercent: removalGuardPercent
    removalGuardMinUsers: removalGuardMinUsers
    authClientId: resolvedApiAppClientId
    authIdentifierUri: resolvedApiAppIdentifierUri
    unauthenticatedAction: unauthenticatedAction
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.name
    identityPrincipalId: identity.outputs.principalId
  }
}

module alerts 'app/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    alertRuleName: '${abbrs.insightsScheduledQueryRules}sync-runs-${resourceToken}'
    actionGroupName: '${abbrs.insightsActionGroups}sync-${resourceToken}'
    location: location
    tags: tags
    logAnalyticsWorkspaceId: logAnalytics.outputs.resourceId
    alertEmail: alertEmail
  }
}

// azd writes these into .azure/<env>/.env; the README's commands read them.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_NAME string = api.outputs.name
output SERVICE_API_NAME string = api.outputs.name
output SERVICE_API_URI string = 'https://${api.outputs.defaultHostName}'
output MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output MANAGED_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output GRAPH_APP_CLIENT_ID string = resolvedGraphAppClientId
output API_APP_CLIENT_ID string = resolvedApiAppClientId
output API_APP_IDENTIFIER_URI string = resolvedApiAppIdentifierUri
output ADMIN_CONSENT_URL_TEMPLATE string = '${environment().authentication.loginEndpoint}{customerTenantId}/adminconsent?client_id=${resolvedGraphAppClientId}'
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.name
output LOG_ANALYTICS_WORKSPACE_ID string = logAnalytics.outputs.resourceId
