"""JSON-RPC over WebSocket: `endpoint` upgrades and serves a client's socket through the same
dispatch as HTTP, `session` is one client's socket (send queue, subscriptions), `registry` knows
every open socket (limits per user, closing on revocation), `feeds` carries `eth_subscribe`
subscriptions to the nodes under ids of the proxy's own."""
