-- Identity: organisations, their HSM accounts, users, credential envelopes, API keys, and the
-- security events (lockouts, ...) that the audit log will take over.

CREATE TABLE organisations (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE accounts (
    id               bigserial PRIMARY KEY,
    organisation_id  bigint NOT NULL REFERENCES organisations(id),
    address          bytea NOT NULL UNIQUE CHECK (length(address) = 20),
    name             text,
    token_label      text NOT NULL,
    token_serial     text NOT NULL,
    key_id           bytea NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organisation_id, name),
    UNIQUE (token_serial, key_id)
);

CREATE TABLE users (
    id               text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 200),
    organisation_id  bigint NOT NULL REFERENCES organisations(id),
    role             text NOT NULL CHECK (role IN ('signer', 'viewer', 'admin')),
    status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    failed_attempts  integer NOT NULL DEFAULT 0,
    locked_until     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    user_id      text NOT NULL REFERENCES users(id),
    secret_hash  bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

-- The HSM credentials of a user, encrypted (AES-256-GCM) under a key derived from the user's
-- password (kind 'password', PBKDF2) or from an API key's secret (kind 'apikey', HKDF).
CREATE TABLE credential_envelopes (
    id          bigserial PRIMARY KEY,
    user_id     text NOT NULL REFERENCES users(id),
    kind        text NOT NULL CHECK (kind IN ('password', 'apikey')),
    api_key_id  text REFERENCES api_keys(id),
    version     integer NOT NULL DEFAULT 1,
    kdf         text NOT NULL,
    iterations  integer,
    salt        bytea NOT NULL,
    nonce       bytea NOT NULL,
    ciphertext  bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'apikey') = (api_key_id IS NOT NULL))
);
CREATE UNIQUE INDEX credential_envelopes_password ON credential_envelopes (user_id)
    WHERE kind = 'password';
CREATE UNIQUE INDEX credential_envelopes_apikey ON credential_envelopes (api_key_id)
    WHERE kind = 'apikey';

CREATE TABLE security_events (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    user_id  text,
    kind     text NOT NULL,
    detail   jsonb NOT NULL DEFAULT '{}'
);
