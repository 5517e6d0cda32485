// The Function App: Flex Consumption, Python 3.11, two user-assigned identities (the app's for
// storage and monitoring, the Graph identity for Microsoft Graph only), every app setting the code
// reads, App Service Authentication (Entra ID, multi-tenant) in front of it, and its logs in Log
// Analytics.
param name string
param location string = resourceGroup().location
param tags object = {}
@description('The azd service this app hosts (azure.yaml).')
param serviceName string = 'api'
param appServicePlanId string
@description('Resource id of the app\'s user-assigned identity (storage, monitoring, App Service Authentication).')
param identityId string
@description('Client id of the app\'s user-assigned identity.')
param identityClientId string
@description('Resource id of the Graph identity: the federated credential of the Graph app, nothing else.')
param graphIdentityId string
@description('Client id of the Graph identity.')
param graphIdentityClientId string
param storageAccountName string
param deploymentStorageContainerName string
param applicationInsightsName string
param logAnalyticsWorkspaceId string
param runtimeVersion string = '3.11'
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048
param maximumInstanceCount int = 40

// The app's settings (shared/settings.py; names in /work/plan/CONTRACT.md).
@description('GRAPH_APP_CLIENT_ID: the multi-tenant app the Graph identity federates into, one token per customer tenant.')
param graphAppClientId string
@description('GRAPH_CLOUD: global, usgov, usgovdod or china; the Graph endpoint and token authority follow it.')
@allowed([
  'global'
  'usgov'
  'usgovdod'
  'china'
])
param graphCloud string = 'global'
param syncQueue string = 'sync-refresh'
param syncSchedule string = '0 0 2 * * *'
param removalGraceDays string = '7'
param removalGuardPercent string = '10'
param removalGuardMinUsers string = '20'
param removalGuardMajorityPercent string = '50'
@description('ADMIN_ROLE_IDS: Entra role template ids (wids) that make a customer\'s user an admin.')
param adminRoleIds string
param notifyDebounceSeconds string = '20'
param auditContainerName string = 'audit'
param auditRetentionDays int = 400
@description('EVENTS_TOPIC_ENDPOINT: the optional Event Grid topic for roster-change CloudEvents; empty: none.')
param eventsTopicEndpoint string = ''

// App Service Authentication.
@description('Client id of the API app registration (app role Sync.Operator). Empty: authentication is not configured and the API refuses every data request (it fails closed).')
param authClientId string
@description('Application ID URI of the API app registration: the audience of tokens issued for it.')
param authIdentifierUri string = ''
@allowed([
  'Return401'
  'RedirectToLoginPage'
])
param unauthenticatedAction string = 'Return401'
@description('Routes served without sign-in: those whose handlers check something else (CONTRACT.md). The health probe, the OpenAPI document, the page and its static files carry no data; /api/notifications checks Graph\'s validation token and each subscription\'s clientState; /api/consent/callback checks a one-time state.')
param anonymousPaths array = [
  '/api/health'
  '/api/openapi.json'
  '/api/ui'
  '/api/ui/app.js'
  '/api/ui/styles.css'
  '/api/ui/favicon.ico'
  '/api/notifications'
  '/api/consent/callback'
]

// App Service Authentication reads this app setting's value as the client id of a managed
// identity and signs in with its federated token instead of a client secret.
var authClientAssertionSetting = 'OVERRIDE_USE_MI_FIC_ASSERTION_CLIENTID'

resource stg 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  //checkov:skip=CKV_AZURE_17:Callers authenticate with Entra ID tokens (App Service Authentication); client certificates would add a credential to issue and rotate.
  //checkov:skip=CKV_AZURE_222:The API and its page are reached from browsers and scripts on the internet; App Service Authentication (Entra ID) guards every data route instead.
  //checkov:skip=CKV_AZURE_212:Flex Consumption scales instances per event by itself; siteConfig.numberOfWorkers does not apply to it.
  //checkov:skip=CKV_AZURE_213:Flex Consumption does not support the App Service health check; /api/health stays anonymous for external probes.
  //checkov:skip=CKV_AZURE_78:Flex Consumption deprecates siteConfig.ftpsState (FTPS is not supported there); FTP and SCM basic publishing credentials are switched off below.
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
      '${graphIdentityId}': {}
    }
  }
  properties: {
    serverFarmId: appServicePlanId
    httpsOnly: true
    publicNetworkAccess: 'Enabled'
    clientCertEnabled: false
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${stg.properties.primaryEndpoints.blob}${deploymentStorageContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: runtimeVersion
      }
    }
  }

  resource settings 'config' = {
    name: 'appsettings'
    properties: appSettings
  }

  // Deployments (azd) and the Kudu site use Entra ID; basic publishing credentials stay off.
  resource ftpCredentials 'basicPublishingCredentialsPolicies' = {
    name: 'ftp'
    properties: {
      allow: false
    }
  }

  resource scmCredentials 'basicPublishingCredentialsPolicies' = {
    name: 'scm'
    properties: {
      allow: false
    }
  }
}

// Every setting the code and the Functions host read, and nothing Flex Consumption deprecates.
// tests/unit/test_infra_settings.py (infra/scripts/check_infra.py) checks names AND values.
var appSettings = {
  // The Functions host's own storage, identity-based: blobs (deployment package, locks), queues, tables.
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: stg.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: stg.properties.primaryEndpoints.queue
  AzureWebJobsStorage__tableServiceUri: stg.properties.primaryEndpoints.table
  // The app's tables, queues, lock blobs and audit archive (shared/storage.py, the queue triggers).
  SYNC_STORAGE__credential: 'managedidentity'
  SYNC_STORAGE__clientId: identityClientId
  SYNC_STORAGE__tableServiceUri: stg.properties.primaryEndpoints.table
  SYNC_STORAGE__queueServiceUri: stg.properties.primaryEndpoints.queue
  SYNC_STORAGE__blobServiceUri: stg.properties.primaryEndpoints.blob
  AUDIT_CONTAINER: auditContainerName
  AUDIT_RETENTION_DAYS: string(auditRetentionDays)
  // Microsoft Graph: the Graph identity is the federated credential of the multi-tenant Graph app.
  GRAPH_CLOUD: graphCloud
  GRAPH_AUTH: 'federated'
  GRAPH_APP_CLIENT_ID: graphAppClientId
  GRAPH_IDENTITY_CLIENT_ID: graphIdentityClientId
  AZURE_CLIENT_ID: identityClientId
  // Who may call: operators of this tenant, admins of connected customer tenants.
  HOME_TENANT_ID: tenant().tenantId
  ADMIN_ROLE_IDS: adminRoleIds
  APP_BASE_URL: 'https://${functionApp.properties.defaultHostName}'
  // The sync itself.
  SYNC_QUEUE: syncQueue
  SYNC_SCHEDULE: syncSchedule
  // Change notifications: the coalescing queue and the subscription renewal timer (sync/notifications.py).
  NOTIFY_QUEUE: 'sync-notify'
  NOTIFY_RENEW_SCHEDULE: '0 30 */6 * * *'
  REMOVAL_GRACE_DAYS: removalGraceDays
  REMOVAL_GUARD_PERCENT: removalGuardPercent
  REMOVAL_GUARD_MIN_USERS: removalGuardMinUsers
  REMOVAL_GUARD_MAJORITY_PERCENT: removalGuardMajorityPercent
  NOTIFY_DEBOUNCE_SECONDS: notifyDebounceSeconds
  EVENTS_TOPIC_ENDPOINT: eventsTopicEndpoint
  // Telemetry: host.json telemetryMode OpenTelemetry + the Python worker's Azure Monitor exporter for
  // the "sync" logger (shared/telemetry.py), Entra ingestion only.
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
  PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME: 'sync'
  // App Service Authentication: the app identity stands in for a client secret.
  OVERRIDE_USE_MI_FIC_ASSERTION_CLIENTID: identityClientId
}

// Host and app logs (FunctionAppLogs) reach the workspace even when Application Insights
// ingestion does not (a broken exporter, a missing role): the failed-invocation alert reads them.
resource appDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'function-app-logs'
  scope: functionApp
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'FunctionAppLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

// App Service Authentication (Easy Auth v2), multi-tenant: operators sign in from the home tenant,
// admins of connected customer tenants from theirs. With the common issuer Easy Auth does not check
// which tenant a token comes from (Microsoft documents this for multi-tenant apps), so the code
// checks tid itself: HOME_TENANT_ID and Sync.Operator, or a connected tenant and an ADMIN_ROLE_IDS
// role in wids. The code refuses every data call while this is off (WEBSITE_AUTH_ENABLED): it stays
// off until the API app exists.
var authEnabled = !empty(authClientId)

resource authSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  //checkov:skip=CKV_AZURE_13:checkov reads the v1 authsettings schema (properties.enabled); this authsettingsV2 resource turns authentication on with platform.enabled and requireAuthentication, asserted by tests/unit/test_infra_settings.py.
  //checkov:skip=CKV_AZURE_63:Applies to the web config resource, not to authsettingsV2; the app logs to Application Insights and FunctionAppLogs.
  //checkov:skip=CKV_AZURE_65:Applies to the web config resource, not to authsettingsV2; errors are problem+json documents written by the app.
  //checkov:skip=CKV_AZURE_66:Applies to the web config resource, not to authsettingsV2; requests are traced in Application Insights.
  //checkov:skip=CKV_AZURE_80:Applies to the .NET web config, not to authsettingsV2 of a Python app.
  //checkov:skip=CKV_AZURE_88:Applies to the web config resource; a Flex Consumption app mounts no Azure Files share.
  //checkov:skip=CKV_AZURE_222:Applies to the site, not to authsettingsV2 (see the skip on the site).
  parent: functionApp
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: authEnabled
      runtimeVersion: '~1'
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: unauthenticatedAction
      redirectToProvider: 'azureactivedirectory'
      excludedPaths: anonymousPaths
    }
    httpSettings: {
      requireHttps: true
      routes: {
        apiPrefix: '/.auth'
      }
      forwardProxy: {
        convention: 'NoProxy'
      }
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: authEnabled
        registration: {
          openIdIssuer: '${environment().authentication.loginEndpoint}common/v2.0'
          clientId: authClientId
          clientSecretSettingName: authClientAssertionSetting
        }
        validation: {
          allowedAudiences: empty(authIdentifierUri) ? [authClientId] : [authClientId, authIdentifierUri]
        }
      }
    }
    login: {
      tokenStore: {
        enabled: false
      }
      preserveUrlFragmentsForLogins: false
      cookieExpiration: {
        convention: 'FixedTime'
        timeToExpiration: '08:00:00'
      }
      nonce: {
        validateNonce: true
        nonceExpirationInterval: '00:05:00'
      }
    }
  }
  dependsOn: [
    functionApp::settings
  ]
}

output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
output authEnabled bool = authEnabled
