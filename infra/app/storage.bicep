// The storage account: the Functions host's blobs, queues and tables (deployment package, timer and
// lock state), the app's tables, queues, tenant lock blobs and the immutable audit archive. Entra ID
// only: shared-key access is off, so neither account keys nor connection strings exist to leak or
// rotate.
param name string
param location string = resourceGroup().location
param tags object = {}
@description('Blob container that holds the deployment package (Flex Consumption).')
param deploymentContainerName string
@description('Tables the app keeps its state in (shared/storage.py ALL_TABLES).')
param tableNames array
@description('The app\'s queues (refresh, its poison queue, notifications) and the smoke-test queue.')
param queueNames array
@description('Blob container of the per-tenant lock blobs (blob lease).')
param lockContainerName string = 'locks'
@description('Blob container of the append-only audit archive (AUDIT_CONTAINER).')
param auditContainerName string = 'audit'
@description('Days an audit blob can be neither deleted nor overwritten (AUDIT_RETENTION_DAYS).')
@minValue(1)
@maxValue(146000)
param auditRetentionDays int = 400
@description('Workspace that receives the storage services\' write and delete logs.')
param logAnalyticsWorkspaceId string

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    // Geo-redundant: the roster (who was removed, and until when they can be restored) is the
    // one thing Graph cannot give back.
    name: 'Standard_GRS'
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    dnsEndpointType: 'Standard'
    publicNetworkAccess: 'Enabled' //checkov:skip=CKV_AZURE_59:The Flex Consumption app reaches storage over its public endpoint (no VNet in this template); every request needs an Entra token of an identity with a data role, and shared-key access is off.
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow' //checkov:skip=CKV_AZURE_35:See CKV_AZURE_59: without VNet integration the app has no fixed address to allow; access is guarded by Entra ID and RBAC instead of network rules.
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource lockContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: lockContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource auditContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: auditContainerName
  properties: {
    publicAccess: 'None'
  }
}

// Time-based retention (WORM) on the audit archive: for auditRetentionDays after it is written no
// audit blob can be deleted or overwritten, whichever data role asks (the app identity holds Storage
// Blob Data Owner for the Functions host). Protected append writes let the app's append blobs
// grow. The policy is created unlocked, so an Owner of the account can still shorten or remove
// it through the management plane; lock it for compliance (docs/operations.md), after which it
// can only be extended.
resource auditRetention 'Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies@2023-05-01' = {
  parent: auditContainer
  name: 'default'
  properties: {
    immutabilityPeriodSinceCreationInDays: auditRetentionDays
    allowProtectedAppendWrites: true
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [
  for queueName in queueNames: {
    parent: queueService
    name: queueName
  }
]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [
  for tableName in tableNames: {
    parent: tableService
    name: tableName
  }
]

// Writes and deletes of every service go to Log Analytics (StorageWrite, StorageDelete), with the
// transaction metrics. Reads are left out on purpose: the queue trigger polls all day and would
// fill the workspace.
resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'blob-writes-and-deletes'
  scope: blobService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'Transaction'
        enabled: true
      }
    ]
  }
}

resource queueDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'queue-writes-and-deletes'
  scope: queueService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'Transaction'
        enabled: true
      }
    ]
  }
}

resource tableDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'table-writes-and-deletes'
  scope: tableService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'Transaction'
        enabled: true
      }
    ]
  }
}

output name string = storage.name
output id string = storage.id
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output queueEndpoint string = storage.properties.primaryEndpoints.queue
output tableEndpoint string = storage.properties.primaryEndpoints.table
output lockContainerName string = lockContainer.name
output auditContainerName string = auditContainer.name
