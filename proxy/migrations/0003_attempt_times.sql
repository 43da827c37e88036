-- When a user's last password attempt was counted. Wrong passwords count toward the lockout
-- "in a row" within QSIGNER_LOCKOUT_SECONDS of each other: a count left at the limit without a
-- lock (attempts counted by a replica that died before judging them) ends by itself instead of
-- locking the user for good.
ALTER TABLE users ADD COLUMN attempt_at timestamptz;
