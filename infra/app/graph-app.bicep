// Entra ID app registrations, through the Microsoft Graph Bicep extension.
//
// NOTE: this is the only file checkov cannot parse: its Bicep parser does not know the
// `extension` keyword and reports a parsing error for this file (and checks nothing in it).
// That is expected; a parsing error in any other file is a failure. Everything the Graph
// extension does here can also be done with az CLI: infra/scripts/grant-consent.sh.
//
// Two registrations, no secrets in either:
//  * the Graph app: multi-tenant, application permissions GroupMember.Read.All, User.Read.All and
//    MailboxSettings.Read on Microsoft Graph; its only credential is the Function App's
//    user-assigned identity (federated identity credential). Each customer tenant's admin
//    consents once; the app then gets one token per customer tenant.
//  * the API app: this tenant only, app role Sync.Admin; App Service Authentication signs users
//    in with it, again with the identity as its credential instead of a client secret.
extension microsoftGraphV1

@description('Unique name of the multi-tenant Graph app registration.')
param graphAppUniqueName string
param graphAppDisplayName string
@description('Unique name of the API app registration (App Service Authentication, app role Sync.Admin).')
param apiAppUniqueName string
param apiAppDisplayName string
@description('Principal (object) id of the Function App\'s user-assigned identity: the subject of both federated credentials.')
param identityPrincipalId string
@description('The Function App\'s host name, for the sign-in callback and the consent redirect.')
param appHostName string
@description('Grant the Graph application permissions in this (home) tenant now; needs Privileged Role Administrator or Global Administrator.')
param grantHomeTenantConsent bool = true
@description('Object id of a user (or service principal) to give the Sync.Admin app role. Empty: none.')
param adminPrincipalId string = ''

var tenantId = tenant().tenantId
// Tokens of a managed identity are issued by this tenant's v2.0 endpoint.
var identityIssuer = '${environment().authentication.loginEndpoint}${tenantId}/v2.0'
var tokenExchangeAudience = 'api://AzureADTokenExchange'

// Microsoft Graph and its application permissions (app role ids), least privilege:
var microsoftGraphAppId = '00000003-0000-0000-c000-000000000000'
var groupMemberReadAllRoleId = '98830695-27a2-44f7-8c18-0c3ebc9698f6' // GroupMember.Read.All: list groups and read their (transitive) members
var userReadAllRoleId = 'df021288-bdef-4463-88db-98f22de89214' // User.Read.All: read every user's eligibility fields (enabled, licensed, guest)
var mailboxSettingsReadRoleId = '40f97065-369a-49f4-947c-6a255697ae91' // MailboxSettings.Read: mailboxSettings.userPurpose tells shared/room/equipment mailboxes apart
var graphApplicationPermissions = [
  groupMemberReadAllRoleId
  userReadAllRoleId
  mailboxSettingsReadRoleId
]
var userReadScopeId = 'e1fe6dd8-ba31-4d61-89e7-88639da4683d' // User.Read (delegated): sign-in to the API app

var azureCliAppId = '04b07795-8ddb-461a-bbee-02f9e1bf7b46' // Azure CLI: may ask for API tokens without a consent prompt
var syncAdminRoleId = guid(apiAppUniqueName, 'Sync.Admin')
var userImpersonationScopeId = guid(apiAppUniqueName, 'user_impersonation')
var apiIdentifierUri = 'api://${tenantId}/${apiAppUniqueName}'

resource graphApp 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: graphAppUniqueName
  displayName: graphAppDisplayName
  signInAudience: 'AzureADMultipleOrgs'
  // Where a customer's admin lands after the admin-consent link: the page.
  web: {
    redirectUris: [
      'https://${appHostName}/api/ui'
    ]
  }
  requiredResourceAccess: [
    {
      resourceAppId: microsoftGraphAppId
      resourceAccess: [for roleId in graphApplicationPermissions: {
        id: roleId
        type: 'Role'
      }]
    }
  ]

  resource functionIdentity 'federatedIdentityCredentials@v1.0' = {
    name: '${graphAppUniqueName}/function-app-identity'
    description: 'The Function App\'s user-assigned managed identity is this app\'s only credential.'
    issuer: identityIssuer
    subject: identityPrincipalId
    audiences: [
      tokenExchangeAudience
    ]
  }
}

resource graphAppPrincipal 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: graphApp.appId
}

resource microsoftGraph 'Microsoft.Graph/servicePrincipals@v1.0' existing = {
  appId: microsoftGraphAppId
}

// Admin consent in the home tenant (customer tenants consent with the admin-consent link).
resource homeTenantConsent 'Microsoft.Graph/appRoleAssignedTo@v1.0' = [for roleId in graphApplicationPermissions: if (grantHomeTenantConsent) {
  appRoleId: roleId
  principalId: graphAppPrincipal.id
  resourceId: microsoftGraph.id
}]

resource apiApp 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: apiAppUniqueName
  displayName: apiAppDisplayName
  signInAudience: 'AzureADMyOrg'
  identifierUris: [
    apiIdentifierUri
  ]
  appRoles: [
    {
      id: syncAdminRoleId
      value: 'Sync.Admin'
      displayName: 'Sync administrator'
      description: 'Pick groups, run refreshes, approve held removals and read the roster of every tenant in O365 Groups Sync.'
      allowedMemberTypes: [
        'User'
        'Application'
      ]
      isEnabled: true
    }
  ]
  api: {
    requestedAccessTokenVersion: 2
    oauth2PermissionScopes: [
      {
        id: userImpersonationScopeId
        value: 'user_impersonation'
        type: 'User'
        isEnabled: true
        adminConsentDisplayName: 'Use O365 Groups Sync'
        adminConsentDescription: 'Call the O365 Groups Sync API as the signed-in user (the app role Sync.Admin decides what they may do).'
        userConsentDisplayName: 'Use O365 Groups Sync'
        userConsentDescription: 'Call the O365 Groups Sync API as you.'
      }
    ]
    preAuthorizedApplications: [
      {
        appId: azureCliAppId
        delegatedPermissionIds: [
          userImpersonationScopeId
        ]
      }
    ]
  }
  web: {
    redirectUris: [
      'https://${appHostName}/.auth/login/aad/callback'
    ]
    implicitGrantSettings: {
      enableIdTokenIssuance: true
    }
  }
  requiredResourceAccess: [
    {
      resourceAppId: microsoftGraphAppId
      resourceAccess: [
        {
          id: userReadScopeId
          type: 'Scope'
        }
      ]
    }
  ]

  resource easyAuthIdentity 'federatedIdentityCredentials@v1.0' = {
    name: '${apiAppUniqueName}/function-app-identity'
    description: 'App Service Authentication signs in with the Function App\'s identity instead of a client secret.'
    issuer: identityIssuer
    subject: identityPrincipalId
    audiences: [
      tokenExchangeAudience
    ]
  }
}

// Only users and apps holding Sync.Admin can sign in to the API at all.
resource apiAppPrincipal 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: apiApp.appId
  appRoleAssignmentRequired: true
}

resource adminAssignment 'Microsoft.Graph/appRoleAssignedTo@v1.0' = if (!empty(adminPrincipalId)) {
  appRoleId: syncAdminRoleId
  principalId: adminPrincipalId
  resourceId: apiAppPrincipal.id
}

output graphAppClientId string = graphApp.appId
output apiAppClientId string = apiApp.appId
output apiAppIdentifierUri string = apiIdentifierUri
