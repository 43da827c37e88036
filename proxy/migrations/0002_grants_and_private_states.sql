-- Which of its organisation's accounts each user may sign with (issue 13, item 11). Until now
-- every user could use every account of the organisation: at upgrade, every existing user is
-- granted all of them, so nothing changes for current deployments.

-- A grant may only join a user and an account of the same organisation: the composite foreign
-- keys below need these (already unique) pairs as keys.
ALTER TABLE users ADD UNIQUE (id, organisation_id);
ALTER TABLE accounts ADD UNIQUE (id, organisation_id);

CREATE TABLE user_accounts (
    user_id          text NOT NULL,
    account_id       bigint NOT NULL,
    organisation_id  bigint NOT NULL,
    granted_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, account_id),
    FOREIGN KEY (user_id, organisation_id) REFERENCES users (id, organisation_id),
    FOREIGN KEY (account_id, organisation_id) REFERENCES accounts (id, organisation_id)
);

INSERT INTO user_accounts (user_id, account_id, organisation_id)
SELECT u.id, a.id, u.organisation_id
FROM users u JOIN accounts a ON a.organisation_id = u.organisation_id;

-- The GoQuorum private states (multi-tenancy PSIs) each organisation may use (issue 13, item 9):
-- the Quorum-PSI header reaches a node only with one of its organisation's PSIs.
CREATE TABLE organisation_private_states (
    organisation_id  bigint NOT NULL REFERENCES organisations(id),
    psi              text NOT NULL CHECK (psi ~ '^[A-Za-z0-9._:-]{1,100}$'),
    PRIMARY KEY (organisation_id, psi)
);
