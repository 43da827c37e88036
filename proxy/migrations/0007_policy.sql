-- The organisations' policies (every version kept: a decision names the version that made it),
-- the limits' counters, and requests held for approval.

CREATE TABLE policy_versions (
    organisation_id  bigint NOT NULL REFERENCES organisations(id),
    version          integer NOT NULL CHECK (version >= 1),
    source           text NOT NULL,            -- the YAML as the user wrote it
    installed_by     text,
    installed_at     timestamptz NOT NULL DEFAULT now(),
    -- From when each limit counts, by name: the installation of the first of the consecutive
    -- versions that defined it exactly so (editing a rule does not reset the limits).
    limit_since      jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (organisation_id, version)
);

-- What a limit let through: one row per request and limit, reserved in the transaction that
-- decided, released when the request failed before reaching a node. A limit counts the rows of
-- its own policy version onwards (it "counts what it let through since it was installed").
-- `ticket` names one decision (a caller's X-Request-Id may repeat); a gas limit's row gets the
-- transaction's hash once sent, and the gas the receipt says was used once mined.
CREATE TABLE policy_usage (
    id               bigserial PRIMARY KEY,
    organisation_id  bigint NOT NULL REFERENCES organisations(id),
    limit_name       text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('transactions', 'gas', 'value', 'token')),
    scope            text NOT NULL,
    amount           numeric(78, 0) NOT NULL CHECK (amount >= 0),
    at               timestamptz NOT NULL DEFAULT now(),
    ticket           text NOT NULL,
    request_id       text NOT NULL,
    tx_hash          bytea,
    state            text NOT NULL DEFAULT 'reserved'
                     CHECK (state IN ('reserved', 'released'))
);
CREATE INDEX policy_usage_window ON policy_usage (organisation_id, limit_name, scope, at)
    WHERE state = 'reserved';
CREATE INDEX policy_usage_ticket ON policy_usage (ticket);
CREATE INDEX policy_usage_gas ON policy_usage (tx_hash) WHERE kind = 'gas' AND tx_hash IS NOT NULL;

-- A request a rule held: bound to the digest of the exact request (caller, method, params).
CREATE TABLE approvals (
    id               text PRIMARY KEY,
    organisation_id  bigint NOT NULL REFERENCES organisations(id),
    requester        text NOT NULL,
    request_digest   bytea NOT NULL CHECK (length(request_digest) = 32),
    method           text NOT NULL,
    summary          jsonb NOT NULL DEFAULT '{}',  -- what an approver reads: account, to, value
    rule             text NOT NULL,
    policy_version   integer NOT NULL,
    needed           integer NOT NULL CHECK (needed >= 1),
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'approved', 'rejected', 'used', 'expired')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    decided_at       timestamptz,
    used_at          timestamptz,
    used_by_request  text
);
-- One live approval per (requester, request): a repeat of a held request finds it.
CREATE UNIQUE INDEX approvals_live ON approvals (requester, request_digest)
    WHERE state IN ('pending', 'approved');
-- What a repeat of a held request looks up: its requester's approvals not yet told or used.
CREATE INDEX approvals_open ON approvals (requester, request_digest, created_at)
    WHERE used_at IS NULL;

CREATE TABLE approval_votes (
    approval_id  text NOT NULL REFERENCES approvals(id),
    user_id      text NOT NULL REFERENCES users(id),
    vote         text NOT NULL CHECK (vote IN ('approve', 'reject')),
    at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (approval_id, user_id)
);
