"""Organisation policy (contract section 6), pure: `parse.parse_policy` validates the file,
`evaluate.evaluate` decides a request over counters the proxy hands in, `limits.charges` says what
it adds to them; `abi` reads signatures, calldata and reverts. No I/O, nothing from `proxy`."""
