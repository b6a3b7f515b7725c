"""Where each instruction type is submitted over HTTP (shared by the API and the client)."""

from __future__ import annotations

INSTRUCTION_PATHS: dict[str, str] = {
    "party.register": "/v1/parties",
    "party.key_add": "/v1/party-keys",
    "party.key_revoke": "/v1/party-keys/revocations",
    "account.open": "/v1/accounts",
    "project.register": "/v1/projects",
    "project.status": "/v1/projects/status-changes",
    "forest_unit.register": "/v1/forest-units",
    "report.submit": "/v1/reports",
    "report.verify": "/v1/reports/verifications",
    "report.reject": "/v1/reports/rejections",
    "report.withdraw": "/v1/reports/withdrawals",
    "credits.issue": "/v1/issuances",
    "credits.transfer": "/v1/transfers",
    "credits.retire": "/v1/retirements",
    "credits.cancel": "/v1/cancellations",
    "redd.reversal": "/v1/reversals",
}

#: Headers of a signed read (holdings are private to their holder and the administrators).
AUTH_ACTOR = "X-Registry-Actor"
AUTH_KEY_ID = "X-Registry-Key-Id"
AUTH_DATE = "X-Registry-Date"
AUTH_SIGNATURE = "X-Registry-Signature"
