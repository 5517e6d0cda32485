// Role assignments. Nothing holds a key: every grant below is an Entra data role.
//
// The app identity (AZURE_CLIENT_ID) serves both storage connections and Application Insights:
//   AzureWebJobsStorage (the Functions host, "Connecting to host storage with an identity"):
//     Storage Blob Data Owner (the host's minimum), Storage Table Data Contributor (its
//     diagnostic events), Storage Queue Data Contributor (as Microsoft's Flex samples grant);
//   SYNC_STORAGE (the app): Storage Table Data Contributor, Storage Queue Data Contributor and
//     Storage Blob Data Contributor (locks, audit). Owner covers Contributor; the assignment is
//     kept so that the app's own needs stay written down if the host ever moves elsewhere.
// Blob Data Owner can delete blobs, but not the audit archive's: its time-based immutability
// policy refuses deletes and overwrites for AUDIT_RETENTION_DAYS, and the policy itself is a
// management-plane object no data role can touch (app/storage.bicep).
// The Graph identity (GRAPH_IDENTITY_CLIENT_ID) gets nothing here: it is only the federated
// credential of the Graph app. tests/unit/test_infra_settings.py checks all of this.
param storageAccountName string
param applicationInsightsName string
@description('Principal (object) id of the app\'s storage/monitoring user-assigned identity.')
param identityPrincipalId string
@description('Queue the post-deploy smoke test writes to and reads back (scripts/smoke.sh).')
param smokeQueueName string
@description('Object id of whoever runs azd: may use the smoke queue, nothing else. Empty: no one.')
param deployerPrincipalId string = ''

// Built-in role definition ids.
var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Storage Blob Data Owner: the host's blobs and the deployment package
var storageBlobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe' // Storage Blob Data Contributor: lock blobs, audit archive
var storageQueueDataContributorRoleId = '974c5e8b-45b9-4653-ba55-5f855dd0fb88' // Storage Queue Data Contributor: the host's queues, refresh and notify queues
var storageTableDataContributorRoleId = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Storage Table Data Contributor: the host's tables, the app's tables
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb' // Monitoring Metrics Publisher: Entra-authenticated telemetry

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource smokeQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = {
  name: '${storageAccountName}/default/${smokeQueueName}'
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource blobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, identityPrincipalId, storageBlobDataOwnerRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwnerRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource blobDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, identityPrincipalId, storageBlobDataContributorRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributorRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource queueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, identityPrincipalId, storageQueueDataContributorRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributorRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource tableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, identityPrincipalId, storageTableDataContributorRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, identityPrincipalId, monitoringMetricsPublisherRoleId)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The deployer may put and read messages on the smoke queue only (a role scoped to that queue),
// so scripts/smoke.sh can prove the queue service answers Entra-authenticated calls.
resource smokeQueueUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId)) {
  name: guid(smokeQueue.id, deployerPrincipalId, storageQueueDataContributorRoleId)
  scope: smokeQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributorRoleId)
    principalId: deployerPrincipalId
  }
}
