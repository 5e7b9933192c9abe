#![no_std]
// The library target only exists so that `agent` can declare a build-dependency on this crate,
// which tells cargo to rebuild the agent when the programs change.
