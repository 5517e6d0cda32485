// Entra ID app registrations, through the Microsoft Graph Bicep extension.
//
// NOTE: this is the only file checkov cannot parse: its Bicep parser does not know the
// `extension` keyword and reports a parsing error for this file (and checks nothing in it).
// That is expected; a parsing error in any other file is a failure. Everything the Graph
// extension does here can also be done with az CLI: infra/scripts/grant-consent.sh.
// Needs Bicep 0.30.3 or later (the extension's dynamic types); infra/scripts/check-bicep-version.sh
// stops `azd provision` before an older one fails on this file. It deploys on its own too
// (infra/scripts/provision-graph-apps.sh): an Entra admin can run it apart from the Azure deployment.
//
// Two registrations, no secrets in either:
//  * the Graph app: multi-tenant, application permissions GroupMember.Read.All, User.Read.All,
//    Member.Read.Hidden and MailboxSettings.Read on Microsoft Graph; its only credential is the
//    Graph identity (federated identity credential). Each customer tenant's admin consents once
//    (the consent link; the redirect returns to /api/consent/callback); the app then gets one
//    token per customer tenant.
//  * the API app: multi-tenant sign-in for operators (home tenant, app role Sync.Operator) and the
//    admins of connected customer tenants (wids); App Service Authentication signs users in with
//    it, with the app identity as its credential instead of a client secret.
extension microsoftGraphV1

@description('Unique name of the multi-tenant Graph app registration.')
param graphAppUniqueName string
param graphAppDisplayName string
@description('Unique name of the API app registration (App Service Authentication, app role Sync.Operator).')
param apiAppUniqueName string
param apiAppDisplayName string
@description('Principal (object) id of the Graph identity: the subject of the Graph app\'s federated credential.')
param graphIdentityPrincipalId string
@description('Principal (object) id of the app identity: the subject of the API app\'s federated credential (App Service Authentication).')
param appIdentityPrincipalId string
@description('The app\'s public https root (APP_BASE_URL): sign-in callback and consent redirect.')
param appBaseUrl string
@description('Audience of the managed identities\' tokens for the exchange: api://AzureADTokenExchange, ...USGov or ...China.')
param tokenExchangeAudience string = 'api://AzureADTokenExchange'
@description('Grant the Graph application permissions in this (home) tenant now; needs Privileged Role Administrator or Global Administrator. Off by default: the deployer then opens the consent link azd prints.')
param grantHomeTenantConsent bool = false
@description('Object id of a user (or service principal) to give the Sync.Operator app role. Empty: none.')
param adminPrincipalId string = ''
@description('Also request the application permission Graph needs for group change notifications (read all groups), so membership changes reach the roster within a minute instead of at night. Off by default: least privilege.')
param groupChangeNotifications bool = false

var tenantId = tenant().tenantId
// Tokens of a managed identity are issued by this tenant's v2.0 endpoint.
var identityIssuer = '${environment().authentication.loginEndpoint}${tenantId}/v2.0'

// Microsoft Graph and its application permissions (app role ids), least privilege:
var microsoftGraphAppId = '00000003-0000-0000-c000-000000000000'
var groupMemberReadAllRoleId = '98830695-27a2-44f7-8c18-0c3ebc9698f6' // GroupMember.Read.All: list groups and read their (transitive) members
var userReadAllRoleId = 'df021288-bdef-4463-88db-98f22de89214' // User.Read.All: read every user's eligibility fields (enabled, licensed, guest)
var memberReadHiddenRoleId = '658aa5d8-239f-45c4-aa12-864f4fc7e490' // Member.Read.Hidden: members of groups whose membership is hidden
var mailboxSettingsReadRoleId = '40f97065-369a-49f4-947c-6a255697ae91' // MailboxSettings.Read: mailboxSettings.userPurpose tells shared/room/equipment mailboxes apart
// Optional (groupChangeNotifications): Graph lets an app subscribe to group changes only with this
// broader permission ("Create subscription"); without it membership changes arrive at night.
var groupChangeNotificationsRoleId = '5b567255-7703-4780-807c-7be8301ae99b'
var graphApplicationPermissions = concat(
  [
    groupMemberReadAllRoleId
    userReadAllRoleId
    memberReadHiddenRoleId
    mailboxSettingsReadRoleId
  ],
  groupChangeNotifications ? [groupChangeNotificationsRoleId] : []
)
// Delegated permissions of App Service Authentication's sign-in (OpenID Connect + the user's profile).
var signInScopeIds = [
  'e1fe6dd8-ba31-4d61-89e7-88639da4683d' // User.Read
  '37f7f235-527c-4136-accd-4a02d197296e' // openid
  '14dad69e-099b-42c9-810b-d002981feec1' // profile
  '64a6cdd6-aab1-4aaf-94b8-3cc8405e90d0' // email
]
var signInScopeNames = 'User.Read openid profile email'

var azureCliAppId = '04b07795-8ddb-461a-bbee-02f9e1bf7b46' // Azure CLI: may ask for API tokens without a consent prompt
var syncOperatorRoleId = guid(apiAppUniqueName, 'Sync.Operator')
var retiredSyncAdminRoleId = guid(apiAppUniqueName, 'Sync.Admin')
var userImpersonationScopeId = guid(apiAppUniqueName, 'user_impersonation')
var apiIdentifierUri = 'api://${tenantId}/${apiAppUniqueName}'

resource graphApp 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: graphAppUniqueName
  displayName: graphAppDisplayName
  signInAudience: 'AzureADMultipleOrgs'
  // After the admin-consent link: the page (plain link) or the app's callback (link with state).
  web: {
    redirectUris: [
      '${appBaseUrl}/api/ui'
      '${appBaseUrl}/api/consent/callback'
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

  resource graphIdentityCredential 'federatedIdentityCredentials@v1.0' = {
    name: '${graphAppUniqueName}/graph-identity'
    description: 'The Function App\'s Graph identity is this app\'s only credential.'
    issuer: identityIssuer
    subject: graphIdentityPrincipalId
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

// Admin consent in the home tenant, opt-in (customer tenants consent with the admin-consent link).
resource homeTenantConsent 'Microsoft.Graph/appRoleAssignedTo@v1.0' = [for roleId in graphApplicationPermissions: if (grantHomeTenantConsent) {
  appRoleId: roleId
  principalId: graphAppPrincipal.id
  resourceId: microsoftGraph.id
}]

resource apiApp 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: apiAppUniqueName
  displayName: apiAppDisplayName
  signInAudience: 'AzureADMultipleOrgs'
  // wids (the user's directory roles) is in the tokens only with DirectoryRole (or All).
  groupMembershipClaims: 'DirectoryRole'
  identifierUris: [
    apiIdentifierUri
  ]
  appRoles: [
    {
      id: syncOperatorRoleId
      value: 'Sync.Operator'
      displayName: 'Sync operator'
      description: 'Operate O365 Groups Sync for every connected tenant: connect tenants, pick groups, run refreshes, approve held removals, read rosters.'
      allowedMemberTypes: [
        'User'
        'Application'
      ]
      isEnabled: true
    }
    {
      // Replaced by Sync.Operator; kept disabled so an existing registration updates in place.
      id: retiredSyncAdminRoleId
      value: 'Sync.Admin'
      displayName: 'Sync administrator (retired)'
      description: 'Retired: use Sync.Operator.'
      allowedMemberTypes: [
        'User'
        'Application'
      ]
      isEnabled: false
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
        adminConsentDescription: 'Call the O365 Groups Sync API as the signed-in user (their role decides what they may do).'
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
      '${appBaseUrl}/.auth/login/aad/callback'
    ]
    implicitGrantSettings: {
      enableIdTokenIssuance: true
    }
  }
  requiredResourceAccess: [
    {
      resourceAppId: microsoftGraphAppId
      resourceAccess: [for scopeId in signInScopeIds: {
        id: scopeId
        type: 'Scope'
      }]
    }
  ]

  resource appIdentityCredential 'federatedIdentityCredentials@v1.0' = {
    name: '${apiAppUniqueName}/app-identity'
    description: 'App Service Authentication signs in with the Function App\'s app identity instead of a client secret.'
    issuer: identityIssuer
    subject: appIdentityPrincipalId
    audiences: [
      tokenExchangeAudience
    ]
  }
}

// In the home tenant only holders of Sync.Operator can sign in at all. (A customer tenant's own
// service principal, created when its admin first signs in, has no assignment requirement; the
// code admits only its admins.)
resource apiAppPrincipal 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: apiApp.appId
  appRoleAssignmentRequired: true
}

// Tenant-wide consent to the sign-in scopes in the home tenant, so operators are not asked (or,
// where user consent is off, refused) at their first sign-in. Needs Cloud Application
// Administrator or Application Administrator, not Privileged Role Administrator.
resource signInConsent 'Microsoft.Graph/oauth2PermissionGrants@v1.0' = {
  clientId: apiAppPrincipal.id
  consentType: 'AllPrincipals'
  resourceId: microsoftGraph.id
  scope: signInScopeNames
}

resource operatorAssignment 'Microsoft.Graph/appRoleAssignedTo@v1.0' = if (!empty(adminPrincipalId)) {
  appRoleId: syncOperatorRoleId
  principalId: adminPrincipalId
  resourceId: apiAppPrincipal.id
}

output graphAppClientId string = graphApp.appId
output apiAppClientId string = apiApp.appId
output apiAppIdentifierUri string = apiIdentifierUri
