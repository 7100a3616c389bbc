from django.urls import path

from web import api, audit, charts, domains, health, m365, messages, o365, search, team, tokens, views

urlpatterns = [
    path("", views.home, name="home"),
    path("status/", views.status, name="status"),
    path("api/v1/status", api.status, name="api-status"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("o365", o365.webhook, name="o365"),
    path("search/", search.search_page, name="search"),
    path("messages/<int:message_id>/", messages.message_view, name="message"),
    path("messages/<int:message_id>/attachments/<int:number>", messages.attachment, name="message-attachment"),
    path("api/v1/messages", search.api_messages, name="api-messages"),
    path("api/v1/messages/<int:message_id>.eml", messages.original_eml, name="api-message-eml"),
    path("settings/tokens/", tokens.tokens, name="tokens"),
    path("settings/tokens/<int:token_id>/revoke", tokens.revoke, name="token-revoke"),
    path("audit/", audit.audit_log, name="audit"),
    # Tenant portal: charts, token rotation, team, domains.
    path("status/charts/", charts.charts, name="status-charts"),
    path("status/rotate-token/", views.rotate_token, name="rotate-token"),
    path("status/organization/", views.set_organization, name="set-organization"),
    path("team/", team.team, name="team"),
    path("team/invitations/<int:invitation_id>/resend/", team.resend_invitation, name="team-invitation-resend"),
    path("team/invitations/<int:invitation_id>/revoke/", team.revoke_invitation, name="team-invitation-revoke"),
    path("team/members/<int:membership_id>/role/", team.change_role, name="team-role"),
    path("team/members/<int:membership_id>/remove/", team.remove_member, name="team-remove"),
    path("team/members/<int:membership_id>/aliases/", team.add_alias, name="team-alias-add"),
    path("team/aliases/<int:alias_id>/remove/", team.remove_alias, name="team-alias-remove"),
    path("team/join/<str:secret>/", team.join, name="team-join"),
    path("domains/", domains.domains, name="domains"),
    path("domains/<int:domain_id>/verify/", domains.verify, name="domain-verify"),
    path("domains/<int:domain_id>/remove/", domains.remove, name="domain-remove"),
    # Microsoft 365 connection.
    path("settings/m365/", m365.settings_page, name="m365-settings"),
    path("settings/m365/certificates/", m365.new_certificate, name="m365-certificate-new"),
    path("settings/m365/certificates/<int:certificate_id>.cer", m365.download_certificate, name="m365-certificate-cer"),
    path("settings/m365/test/", m365.test, name="m365-test"),
    path("settings/m365/sync/", m365.sync_now, name="m365-sync"),
    path("api/v1/m365/connection", m365.api_connection, name="api-m365-connection"),
    path("api/v1/m365/certificates", m365.api_certificates, name="api-m365-certificates"),
    path(
        "api/v1/m365/certificates/<int:certificate_id>.cer", m365.api_certificate_cer, name="api-m365-certificate-cer"
    ),
    path("api/v1/m365/test", m365.api_test, name="api-m365-test"),
]
