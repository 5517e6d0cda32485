// The Function App: Flex Consumption, Python 3.11, one user-assigned identity for everything,
// every app setting the code reads, and App Service Authentication (Entra ID) in front of it.
param name string
param location string = resourceGroup().location
param tags object = {}
@description('The azd service this app hosts (azure.yaml).')
param serviceName string = 'api'
param appServicePlanId string
@description('Resource id of the user-assigned managed identity.')
param identityId string
@description('Client id of the user-assigned managed identity.')
param identityClientId string
param storageAccountName string
param deploymentStorageContainerName string
param applicationInsightsName string
param runtimeVersion string = '3.11'
param instanceMemoryMB int = 2048
param maximumInstanceCount int = 40

// The app's settings (shared/settings.py).
@description('GRAPH_APP_CLIENT_ID: the multi-tenant app the identity federates into, one token per customer tenant.')
param graphAppClientId string
param graphBaseUrl string = 'https://graph.microsoft.com/v1.0'
param syncQueue string = 'sync-refresh'
param syncSchedule string = '0 0 2 * * *'
param removalGraceDays string = '7'
param removalGuardPercent string = '10'
param removalGuardMinUsers string = '20'

// App Service Authentication.
@description('Client id of the API app registration (app role Sync.Admin). Empty: authentication is not configured and the API refuses every data request (it fails closed).')
param authClientId string
@description('Application ID URI of the API app registration: the audience of tokens issued for it.')
param authIdentifierUri string = ''
@allowed([
  'Return401'
  'RedirectToLoginPage'
])
param unauthenticatedAction string = 'Return401'
@description('Routes served without sign-in, exactly those whose handlers skip the sign-in check: the health probe, the OpenAPI document and the page\'s static files (no data in any; every data call the page makes is authenticated).')
param anonymousPaths array = [
  '/api/health'
  '/api/openapi.json'
  '/api/ui'
  '/api/ui/app.js'
  '/api/ui/styles.css'
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

// Every setting the code and the Functions host read. tests/unit/test_infra_settings.py checks
// that each name shared/settings.py and shared/telemetry.py read, and each %SETTING% of a
// binding, is here.
var appSettings = {
  // The Functions host's own storage, identity-based: timers, locks, the deployment package.
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: stg.properties.primaryEndpoints.blob
  // The app's tables and refresh queue (shared/storage.py and the queue trigger's connection).
  SYNC_STORAGE__credential: 'managedidentity'
  SYNC_STORAGE__clientId: identityClientId
  SYNC_STORAGE__tableServiceUri: stg.properties.primaryEndpoints.table
  SYNC_STORAGE__queueServiceUri: stg.properties.primaryEndpoints.queue
  SYNC_STORAGE__blobServiceUri: stg.properties.primaryEndpoints.blob
  // Microsoft Graph: the identity is the federated credential of the multi-tenant app.
  GRAPH_BASE_URL: graphBaseUrl
  GRAPH_AUTH: 'federated'
  GRAPH_APP_CLIENT_ID: graphAppClientId
  AZURE_CLIENT_ID: identityClientId
  // The sync itself.
  SYNC_QUEUE: syncQueue
  SYNC_SCHEDULE: syncSchedule
  REMOVAL_GRACE_DAYS: removalGraceDays
  REMOVAL_GUARD_PERCENT: removalGuardPercent
  REMOVAL_GUARD_MIN_USERS: removalGuardMinUsers
  // Telemetry (shared/telemetry.py) with Entra ingestion: no instrumentation key is accepted.
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  PYTHON_ENABLE_OPENTELEMETRY: 'true'
  // App Service Authentication: the identity stands in for a client secret.
  OVERRIDE_USE_MI_FIC_ASSERTION_CLIENTID: identityClientId
  WEBSITE_AUTH_AAD_ALLOWED_TENANTS: tenant().tenantId
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  //checkov:skip=CKV_AZURE_17:Callers authenticate with Entra ID tokens (App Service Authentication); client certificates would add a credential to issue and rotate.
  //checkov:skip=CKV_AZURE_222:The API and its page are reached from browsers and scripts on the internet; App Service Authentication (Entra ID, app role Sync.Admin) guards every data route instead.
  //checkov:skip=CKV_AZURE_212:Flex Consumption scales instances per event by itself; siteConfig.numberOfWorkers does not apply to it.
  //checkov:skip=CKV_AZURE_213:Flex Consumption does not support the App Service health check; /api/health stays anonymous for external probes.
  properties: {
    serverFarmId: appServicePlanId
    httpsOnly: true
    publicNetworkAccess: 'Enabled'
    clientCertEnabled: false
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
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

// App Service Authentication (Easy Auth v2): Entra ID in front of every route but the anonymous
// ones. The code then requires the app role Sync.Admin from the injected principal, and fails
// closed while this is off (WEBSITE_AUTH_ENABLED): it stays off until the API app exists.
var authEnabled = !empty(authClientId)

resource authSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  //checkov:skip=CKV_AZURE_13:checkov reads the v1 authsettings schema (properties.enabled); this authsettingsV2 resource turns authentication on with platform.enabled and requireAuthentication, asserted by tests/unit/test_infra_settings.py.
  //checkov:skip=CKV_AZURE_63:Applies to the web config resource, not to authsettingsV2; the app logs to Application Insights (OpenTelemetry).
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
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
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
