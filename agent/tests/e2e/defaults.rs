//! The agent as a user starts it: no `--probe-mode`, so `auto`, which is also what the DaemonSet
//! runs. Every other test pins a mode; this one proves the default chooses the expected one on
//! this kernel and that the seed incident is counted in it.

use crate::{
    harness::{Agent, expected_default_mode, root_or_skip},
    servers::{SEED_PORT, curl, start_seedsrv},
    unanswered::the_only_unanswered_close,
};

#[test]
fn default_probe_mode_is_the_best_this_kernel_allows_and_counts_the_seed() {
    if !root_or_skip("default_probe_mode_is_the_best_this_kernel_allows_and_counts_the_seed") {
        return;
    }
    let agent = Agent::start_default(&[]);
    let chosen = agent.mode_in_use();
    let expected = expected_default_mode();
    assert_eq!(
        chosen,
        expected,
        "--probe-mode auto chose {chosen}, expected {expected}\n{}",
        agent.stderr_text()
    );
    let (_server, pid) = start_seedsrv();

    // One healthy request, then the seed's: WriteTimeout 1 s, handler 2 s.
    let (code, body, stderr) = curl(&[format!("http://127.0.0.1:{SEED_PORT}/fast")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(body, "fast hello\n");
    let (code, _, stderr) = curl(&[format!("http://127.0.0.1:{SEED_PORT}/")]);
    assert_eq!(code, Some(52), "curl should get an empty reply: {stderr}");

    // Exactly one: the healthy request counts nothing.
    let (_, incident) = the_only_unanswered_close(
        &agent,
        &format!("the seed's unanswered close in {chosen} mode"),
        "seedsrv",
        &SEED_PORT.to_string(),
        "server",
    );
    assert_eq!(incident["pid"], pid);
    assert_eq!(incident["bytes_written"], 0);
}
