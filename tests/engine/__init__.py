"""The test engine's rules, one module per concern, each read from Inngest's Go source.

`tests/inngest_driver.py` is the engine tests meet (stub server, driver, runs); what it decides
lives here, so each rule can be audited next to the Go file it comes from:

* `cel`: expressions as Inngest evaluates them (`pkg/expressions/`): JSON numbers are doubles,
  a missing attribute reads as null, and keys render the way Go formats values.
* `registration`: what a sync must satisfy (`pkg/inngest/function.go`, `concurrency.go`,
  `trigger.go`, with robfig/cron v3's parser); the stub refuses the rest with the engine's reason.
* `stub`: the loopback stand-in for Inngest's API and Event API (sync, send, run lookups).
* `flow`: virtual time and flow control (`pkg/execution/queue/`, `pkg/constraintapi/lua/`):
  concurrency slots held by executing steps, throttled starts, priority order.
"""
