//! Test and benchmark tools (not shipped): the MCP conformance fixture server
//! ([`fixture`], binary `mcp-fixture`) with every tool, resource and prompt the official
//! conformance suite calls by name; a private PostgreSQL cluster ([`postgres`]) for tests that
//! stop, restart or fail over the database.
#![forbid(unsafe_code)]

pub mod fixture;
pub mod postgres;
