-- `quorum-signer tx show HASH` finds a transaction by its hash in every state without reading
-- the whole ledger: ledger_hash_once covers every row with a hash except released ones (which
-- give their hash up with their nonce); this covers those. Rows are released rarely, so the
-- signing path pays for it almost never.
CREATE INDEX ledger_released_hash ON ledger_transactions (tx_hash)
    WHERE state = 'released' AND tx_hash IS NOT NULL;
