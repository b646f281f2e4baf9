//! Versioned migrations, applied at start-up (see `Db::migrate`). Append new versions; never
//! edit a released one. Timestamps are milliseconds since the Unix epoch; every table with
//! records that end has `expires_at`, which the collector uses.

/// `(version, statements separated by ';')`.
pub(crate) const MIGRATIONS: &[(i64, &str)] = &[(1, V1), (2, V2), (3, V3)];

const V1: &str = "
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    data TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

CREATE TABLE oauth_clients (
    client_id TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE authorization_codes (
    code_hash TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    family_id TEXT,
    redeemed_at BIGINT,
    expires_at BIGINT NOT NULL
);

CREATE TABLE token_families (
    family_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    data TEXT NOT NULL,
    revoked_at BIGINT,
    expires_at BIGINT NOT NULL
);
CREATE INDEX token_families_by_session ON token_families (session_id);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id TEXT NOT NULL,
    used_at BIGINT,
    expires_at BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);

CREATE TABLE revocations (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    revoked_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX revocations_by_time ON revocations (revoked_at);

CREATE TABLE upstream_tokens (
    user_id TEXT NOT NULL,
    route_id TEXT NOT NULL,
    data TEXT NOT NULL,
    version BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, route_id)
);

CREATE TABLE pending_authorizations (
    state_hash TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE consents (
    user_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    data TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, client_id)
);

CREATE TABLE keys (
    name TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL
)
";

/// Single-use identifiers (e.g. `private_key_jwt` assertion ids), shared by every replica.
const V2: &str = "
CREATE TABLE used_ids (
    id TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
)
";

/// Client grants outlive browser sessions: families are found by user ("Connected apps",
/// revoking a user) and record their last use. `user_id` of families stored before this is
/// filled in at start-up from their data (see `Store::open`). `idp_tokens`: the identity
/// provider's refresh token of an OpenID Connect sign-in (sealed), kept for the session's life
/// so the grants authorized from it can ask the provider whether it still vouches for the user.
const V3: &str = "
ALTER TABLE token_families ADD COLUMN user_id TEXT;
ALTER TABLE token_families ADD COLUMN last_used_at BIGINT;
CREATE INDEX token_families_by_user ON token_families (user_id);
CREATE TABLE idp_tokens (
    session_id TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    expires_at BIGINT NOT NULL
)
";
