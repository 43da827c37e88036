"""Transaction lifecycle events: what the nonce ledger's transactions go through (queued, sent,
mined, failed, filled), written by the database itself (proxy/migrations/0010) and told to
callers two ways: `stream` over their WebSocket (`eth_subscribe("qsigner_transactions")`), and
`webhooks` POSTed to the organisation's receivers, at least once."""
