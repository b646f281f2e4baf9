//! The gateway's integration tests, one binary (one link): each file under `integration/` is a
//! feature run against a gateway on port 0; `integration/support/` holds the worlds (a gateway
//! with its routes, users and upstreams) and the fakes they are made of.

#[path = "integration/support/mod.rs"]
mod support;

#[path = "integration/aggregate.rs"]
mod aggregate;
#[path = "integration/attacks.rs"]
mod attacks;
#[path = "integration/audit_log_fields.rs"]
mod audit_log_fields;
#[path = "integration/authorization_server.rs"]
mod authorization_server;
#[path = "integration/discovery.rs"]
mod discovery;
#[path = "integration/github.rs"]
mod github;
#[path = "integration/grants.rs"]
mod grants;
#[path = "integration/mtls.rs"]
mod mtls;
#[path = "integration/oidc.rs"]
mod oidc;
#[path = "integration/operations.rs"]
mod operations;
#[path = "integration/policy_and_mcp.rs"]
mod policy_and_mcp;
#[path = "integration/pomerium_configs.rs"]
mod pomerium_configs;
#[path = "integration/registration_abuse.rs"]
mod registration_abuse;
#[path = "integration/sign_in.rs"]
mod sign_in;
#[path = "integration/sign_in_origin.rs"]
mod sign_in_origin;
#[path = "integration/upstream_tokens.rs"]
mod upstream_tokens;
#[path = "integration/websockets.rs"]
mod websockets;
