"""The app's id and the flow-control expressions the engine evaluates (CEL), engine-free so
tests evaluate them with a real CEL implementation without importing the engine."""

from __future__ import annotations

APP_ID = "support-worker"
# Priority by tier, from the event itself (the engine cannot ask Postgres): enterprise runs
# may start up to 10 minutes ahead of queued free-tier runs, pro up to 5. Events without a
# `tier` (e.g. typed into the dashboard) run at normal priority.
PRIORITY_BY_TIER = (
    "has(event.data.tier) && type(event.data.tier) == string"
    ' ? (event.data.tier == "enterprise" ? 600 : (event.data.tier == "pro" ? 300 : 0)) : 0'
)
# One customer's concurrency share and debounce burst, whether the event names them by id (2
# and "2" are one customer) or only by the address they wrote from. Total over JSON: a
# customer_id that is null, empty, a boolean, a list or an object falls through to the sender's
# address, so such emails never share one key (an expression that errors would key them all alike).
# Event numbers are doubles to the engine, whose string() prints 1234567.0 as "1.234567e+06":
# a number goes through int() first.
CUSTOMER_KEY = (
    "has(event.data.customer_id) && type(event.data.customer_id) in [string, int, uint, double]"
    ' && string(event.data.customer_id) != ""'
    " ? (type(event.data.customer_id) == double"
    " ? string(int(event.data.customer_id)) : string(event.data.customer_id))"
    " : (has(event.data.from_email) && type(event.data.from_email) == string"
    ' ? "from:" + event.data.from_email : "unknown")'
)
REJECTION_PREFIX = "rejected "
# Failures of this app's functions (not another app's, not the failure recorder's own).
FAILED_HERE = (
    f'event.data.function_id.startsWith("{APP_ID}-") && event.data.function_id != "{APP_ID}-record-run-failure"'
)
# The email function's retries; its last attempt stops honouring a notifier's Retry-After.
EMAIL_RETRIES = 4
