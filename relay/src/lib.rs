//! `membrane-relay`: one view of the whole mesh. It finds every node's agent through the
//! node registry, merges their monitor event streams (`membrane_api::monitor::Event`,
//! the agents' own and their sidecars' `l7` records) in time order, and serves the merged
//! stream to `membrane monitor --all-nodes` and to a web page of the service map.

pub mod web;
