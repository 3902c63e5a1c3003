"""The audit trail's closed vocabulary, at the bottom of the store so the schema check and
`db.py` (which re-exports it as `db.AuditAction`) both build on it."""

from enum import StrEnum


class AuditAction(StrEnum):
    """The closed vocabulary of the audit trail.

    The one definition: migrating copies it into the `audit_actions` lookup table that
    `audit_log.action` references (`sync_audit_actions`), so a typo fails in Python and in
    Postgres alike. Adding an action is one line here, then `support-worker migrate`.
    """

    MESSAGE_RECEIVED = "message_received"
    REPLY_SENT = "reply_sent"
    REFUND_REQUESTED = "refund_requested"
    REFUND_ISSUED = "refund_issued"
    REFUND_BLOCKED = "refund_blocked"
    DECISION_RECORDED = "decision_recorded"
    DECISION_IGNORED = "decision_ignored"
    EVENT_REJECTED = "event_rejected"
    EVENT_DUPLICATE = "event_duplicate"
    HEALTH_CHECK_COMPLETED = "health_check_completed"
    RUN_FAILED = "run_failed"
    REVIEWER_NOTIFIED = "reviewer_notified"
    REFUND_WITHDRAWN = "refund_withdrawn"
    OUTREACH_RECORDED = "outreach_recorded"
    REVIEWER_NOTIFY_FAILED = "reviewer_notify_failed"
    WEBHOOK_REFUSED = "webhook_refused"
    # An accepted email the webhook had to change to store (cleaned text, cut fields, HTML
    # converted by the fallback, an unreadable attachment): what changed, per message.
    WEBHOOK_REPAIRED = "webhook_repaired"
    # A MessageID seen before arrived with different content: stored beside the first.
    MESSAGE_ID_REUSED = "message_id_reused"
    NOTIFIER_MISCONFIGURED = "notifier_misconfigured"
    ESCALATION_REQUESTED = "escalation_requested"
    ESCALATION_APPROVED = "escalation_approved"
    ESCALATION_EDITED = "escalation_edited"
    ESCALATION_REJECTED = "escalation_rejected"
    ESCALATION_POSTED_VIA_TIMEOUT = "escalation_posted_via_timeout"
    MODEL_UNAVAILABLE = "model_unavailable"
    AUTH_THROTTLED = "auth_throttled"
    EMAIL_DRAFTED = "email_drafted"
    REPLY_SEND_FAILED = "reply_send_failed"
