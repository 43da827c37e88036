-- Each organisation's Tessera (GoQuorum private transactions): the URL of its third-party API,
-- and the Tessera public keys it owns, which its callers may name as `privateFrom`. The first
-- key is the organisation's default sender. An organisation without a row uses
-- QSIGNER_TESSERA_URL, with no key of its own (Tessera's default key sends).
CREATE TABLE organisation_tessera (
    organisation_id  bigint PRIMARY KEY REFERENCES organisations(id),
    url              text NOT NULL CHECK (url ~ '^https?://'),
    -- Curve25519 public keys, base64 (44 characters with its padding)
    keys             text[] NOT NULL DEFAULT '{}'
                     CHECK (array_position(keys, NULL) IS NULL),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
