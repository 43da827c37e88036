-- GoQuorum private transactions in the nonce ledger: the second parameter of
-- eth_sendRawPrivateTransaction ({privateFor, privacyFlag, mandatoryFor}), kept with the signed
-- bytes so that recovery resends a private transaction the way it was first sent. NULL for a
-- public transaction (sent with eth_sendRawTransaction).
ALTER TABLE ledger_transactions
    ADD COLUMN private_args jsonb
        CONSTRAINT ledger_private_args_object
        CHECK (private_args IS NULL OR jsonb_typeof(private_args) = 'object');
