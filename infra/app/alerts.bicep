// Three log alerts on the workspace, evaluated every 15 minutes, one alert per dimension value:
//   runs        a refresh ended failed or held: the SyncRunSummary custom event each finished run
//               emits (shared/telemetry.py), in AppEvents; per tenant and status.
//   invocations a function invocation failed, whatever its trigger: the host's "Executed ... (Failed"
//               lines in FunctionAppLogs (the app's diagnostic setting, independent of Application
//               Insights ingestion) and failed requests in AppRequests; per function. This is what
//               fires when the app cannot start its work at all (a broken worker, a missing role).
//   exceptions  an exception reached Application Insights (AppExceptions); per exception type.
// skipQueryValidation: a new workspace has none of these tables until their first record.
param namePrefix string
param nameSuffix string
param actionGroupName string
param location string = resourceGroup().location
param tags object = {}
@description('The Log Analytics workspace behind Application Insights and the diagnostic settings.')
param logAnalyticsWorkspaceId string
@description('Who is mailed when an alert fires. Empty: no action group; alerts show in the portal only.')
param alertEmail string = ''

var rules = [
  {
    key: 'runs'
    displayName: 'O365 Groups Sync: a run failed or was held'
    description: 'A refresh run ended failed (nothing was changed: see its error, often a missing Graph permission) or held by the removal guard (its removals wait for an approval). One alert per tenant and status.'
    severity: 2
    dimensions: [
      'tenantId'
      'status'
    ]
    query: '''
AppEvents
| where Name == "SyncRunSummary"
| extend tenantId = tostring(Properties.tenantId), runId = tostring(Properties.runId), status = tostring(Properties.status)
| where status in ("failed", "held")
| project TimeGenerated, tenantId, runId, status, error = tostring(Properties.error), guard = tostring(Properties.guard)
'''
  }
  {
    key: 'invocations'
    displayName: 'O365 Groups Sync: a function invocation failed'
    description: 'A function (HTTP route, refresh worker, poison handler, nightly timer) ended with an unhandled error. Read its exception in FunctionAppLogs or AppExceptions. One alert per function.'
    severity: 1
    dimensions: [
      'functionName'
    ]
    query: '''
union isfuzzy=true
    (FunctionAppLogs
    | where Message startswith "Executed '" and Message has "(Failed"
    | project TimeGenerated, functionName = FunctionName, detail = Message),
    (AppRequests
    | where Success == false
    | project TimeGenerated, functionName = Name, detail = strcat(ResultCode, " ", Url))
'''
  }
  {
    key: 'exceptions'
    displayName: 'O365 Groups Sync: exceptions were logged'
    description: 'The host or the app logged an exception to Application Insights. One alert per exception type.'
    severity: 2
    dimensions: [
      'exceptionType'
    ]
    query: '''
union isfuzzy=true
    (AppExceptions
    | project TimeGenerated, exceptionType = ExceptionType, detail = OuterMessage, operationId = OperationId)
'''
  }
]

resource operators 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'syncruns'
    enabled: true
    emailReceivers: [
      {
        name: 'operators'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource alertRules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [
  for rule in rules: {
    name: '${namePrefix}${rule.key}-${nameSuffix}'
    location: location
    tags: tags
    kind: 'LogAlert'
    properties: {
      displayName: rule.displayName
      description: rule.description
      severity: rule.severity
      enabled: true
      skipQueryValidation: true
      scopes: [
        logAnalyticsWorkspaceId
      ]
      evaluationFrequency: 'PT15M'
      windowSize: 'PT15M'
      criteria: {
        allOf: [
          {
            query: rule.query
            timeAggregation: 'Count'
            dimensions: [
              for dimension in rule.dimensions: {
                name: dimension
                operator: 'Include'
                values: [
                  '*'
                ]
              }
            ]
            operator: 'GreaterThan'
            threshold: 0
            failingPeriods: {
              numberOfEvaluationPeriods: 1
              minFailingPeriodsToAlert: 1
            }
          }
        ]
      }
      autoMitigate: false
      actions: {
        actionGroups: empty(alertEmail) ? [] : [
          operators.id
        ]
      }
    }
  }
]

output alertRuleNames array = [for (rule, index) in rules: alertRules[index].name]
