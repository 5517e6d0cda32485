// The fleet workbook (Azure Monitor Workbooks): runs, removals, held runs and Graph throttling
// across every tenant. Its JSON lives in infra/workbooks/ so it can be edited in the portal's
// Advanced Editor and pasted back.
param displayName string = 'O365 Groups Sync: fleet'
param location string = resourceGroup().location
param tags object = {}
@description('The Log Analytics workspace behind Application Insights: the workbook\'s queries run there.')
param logAnalyticsWorkspaceId string

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, displayName)
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: logAnalyticsWorkspaceId
    version: 'Notebook/1.0'
    serializedData: loadTextContent('../workbooks/sync-fleet.workbook.json')
  }
}

output id string = workbook.id
