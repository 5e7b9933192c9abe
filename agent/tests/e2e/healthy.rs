//! Healthy traffic must count zero and must not even reach userspace.

use crate::{
    false_positives::{explaining_agent, judged_exactly},
    harness::root_or_skip,
    servers::{SEED_PORT, curl, start_seedsrv},
};

#[test]
fn healthy_traffic_on_the_seed_server_counts_zero() {
    if !root_or_skip("healthy_traffic_on_the_seed_server_counts_zero") {
        return;
    }
    // The server first: the connection that waits for its port is closed before the agent
    // starts. Every close on the seed's port is then explained: the one record each sends is
    // how the test knows the agent judged its own connections, and the only records healthy
    // traffic sends.
    let (_server, _) = start_seedsrv();
    let agent = explaining_agent("healthy", SEED_PORT, &[]);
    let before = agent.scrape();

    // Five requests on one keep-alive connection.
    let fast = format!("http://127.0.0.1:{SEED_PORT}/fast");
    let (code, body, err) = curl(&vec![fast.clone(); 5]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(body.lines().filter(|l| *l == "fast hello").count(), 5);
    // Five clients that close right after reading the full response.
    for _ in 0..5 {
        let (code, body, err) = curl(std::slice::from_ref(&fast));
        assert_eq!((code, body.as_str()), (Some(0), "fast hello\n"), "{err}");
    }
    // Six connections, each closed at both ends.
    let (after, verdicts) = judged_exactly("healthy", &agent, SEED_PORT, 12.0);
    assert!(!verdicts.contains_key("unanswered"), "{verdicts:?}");
    assert_eq!(after.total("lostwrite_unanswered_closes_total"), 0.0);
    assert_eq!(
        after.total("lostwrite_kernel_events_total")
            - before.total("lostwrite_kernel_events_total"),
        12.0,
        "healthy traffic sent records to userspace beyond the explained closes"
    );
    // Exported, and nothing failed inside the programs.
    for error in ["map_update", "read"] {
        assert_eq!(
            after.value("lostwrite_kernel_errors_total", &[("error", error)]),
            Some(0.0),
            "{error}"
        );
    }
    assert!(agent.incidents().is_empty(), "{:?}", agent.incidents());
}
