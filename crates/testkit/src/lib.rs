//! Test and benchmark tools (not shipped): the MCP conformance fixture server
//! ([`fixture`], binary `mcp-fixture`) with every tool, resource and prompt the official
//! conformance suite calls by name.
#![forbid(unsafe_code)]

pub mod fixture;
