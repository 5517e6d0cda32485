// Optional (main.bicep `eventsTopic`): an Event Grid topic the app publishes roster changes to as
// CloudEvents (EVENTS_TOPIC_ENDPOINT). Entra ID only: local (key) auth is off, and only the app
// identity may send (EventGrid Data Sender on this topic).
param name string
param location string = resourceGroup().location
param tags object = {}
@description('Principal (object) id of the app\'s user-assigned identity.')
param identityPrincipalId string

var eventGridDataSenderRoleId = 'd5a91429-5739-47e2-a06b-3470a27159e7' // EventGrid Data Sender: publish to this topic

resource topic 'Microsoft.EventGrid/topics@2022-06-15' = {
  //checkov:skip=CKV_AZURE_191:The topic delivers to nothing with an identity of its own; the app publishes with its identity (EventGrid Data Sender).
  name: name
  location: location
  tags: tags
  properties: {
    inputSchema: 'CloudEventSchemaV1_0'
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled' //checkov:skip=CKV_AZURE_193:The Flex Consumption app has no VNet in this template; publishing needs an Entra token of an identity holding EventGrid Data Sender, and keys are off.
  }
}

resource dataSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(topic.id, identityPrincipalId, eventGridDataSenderRoleId)
  scope: topic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventGridDataSenderRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output endpoint string = topic.properties.endpoint
