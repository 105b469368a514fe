//! The chaos soak's short version (`make soak` runs the long one): runs
//! created steadily for three minutes on three members while a fault is
//! made about every 20 s (see `tekfed_testbed::soak`). No run may be
//! duplicated, lost or stuck, and none may fail but for a fault that
//! explains it.

use std::time::Duration;

use tekfed_testbed::soak::{Soak, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_survive_a_fault_every_twenty_seconds() {
    // A fixed seed: the same faults in the same order on every run of the
    // suite (`make soak` draws a new one each time).
    let soak = Soak {
        seed: 15,
        runs: 150,
        min_duration: Duration::from_secs(180),
        fault_every: Duration::from_secs(20),
        grace: Duration::from_secs(20),
        stuck_after: Duration::from_secs(300),
    };
    let report = run(&soak).await.unwrap();
    println!("{}", report.table());
    assert!(report.created >= soak.runs, "{}", report.table());
    assert!(report.passed(), "{}", report.table());
}
