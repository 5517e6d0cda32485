// The alert on failed and held runs. It reads the one SyncRunSummary custom event each finished
// run emits (shared/telemetry.py log_run_summary), which Application Insights stores in the
// workspace's AppEvents table, and fires once per tenant and status.
param alertRuleName string
param actionGroupName string
param location string = resourceGroup().location
param tags object = {}
@description('The Log Analytics workspace behind Application Insights.')
param logAnalyticsWorkspaceId string
@description('Who is mailed when the alert fires. Empty: no action group; the alert shows in the portal only.')
param alertEmail string = ''

var failedOrHeldRunsQuery = '''
AppEvents
| where Name == "SyncRunSummary"
| extend tenantId = tostring(Properties.tenantId), runId = tostring(Properties.runId), status = tostring(Properties.status)
| where status in ("failed", "held")
| project TimeGenerated, tenantId, runId, status, error = tostring(Properties.error), guard = tostring(Properties.guard)
'''

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

resource failedOrHeldRuns 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: alertRuleName
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'O365 Groups Sync: a run failed or was held'
    description: 'A refresh run ended failed (nothing was changed: see its error, often a missing Graph permission) or held by the removal guard (its removals wait for an approval). One alert per tenant and status.'
    severity: 2
    enabled: true
    scopes: [
      logAnalyticsWorkspaceId
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: failedOrHeldRunsQuery
          timeAggregation: 'Count'
          dimensions: [
            {
              name: 'tenantId'
              operator: 'Include'
              values: [
                '*'
              ]
            }
            {
              name: 'status'
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

output alertRuleId string = failedOrHeldRuns.id
