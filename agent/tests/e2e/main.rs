//! End-to-end tests: the real agent, the real kernel, real servers on loopback.
//!
//! They need root (eBPF) and share kernel state, so run them serially:
//! `cargo test -p agent --test e2e -- --test-threads=1` (what `cargo xtask test` does). Every test
//! first asserts that the probes attached and that the agent saw the test's own connections, so
//! an agent that silently observes nothing fails.

mod aborts;
mod bpf_objects;
mod close_shapes;
mod databases;
mod db_servers;
mod defaults;
mod errors;
mod false_positives;
mod faults;
mod go_runtime;
mod harness;
mod healthy;
mod kubernetes;
mod prometheus;
mod scale;
mod servers;
mod sessions;
mod streams;
mod tls;
mod unanswered;
mod writes;
