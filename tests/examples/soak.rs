//! `make soak`: the chaos soak (see `tekfed_testbed::soak`) at full length,
//! at least 2,000 runs over at least ten minutes on three members with a
//! fault about every 20 s; prints its table and exits non-zero when a run
//! was duplicated, lost or stuck, or failed with no fault to explain it.
//!
//! `--seed N` repeats a soak (the same faults in the same order); `--runs`,
//! `--minutes` and `--fault-every` change its size.

use std::time::Duration;

use tekfed_testbed::soak::{Soak, run};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let number = |name: &str, default: f64| {
        arg(&args, name)
            .map(|v| {
                v.parse::<f64>()
                    .unwrap_or_else(|_| panic!("{name} takes a number, not {v}"))
            })
            .unwrap_or(default)
    };
    let seed = arg(&args, "--seed")
        .map(|s| s.parse::<u64>().expect("--seed takes a whole number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(1)
        });
    let soak = Soak {
        seed,
        runs: number("--runs", 2000.0) as usize,
        min_duration: Duration::from_secs_f64(number("--minutes", 10.0) * 60.0),
        fault_every: Duration::from_secs_f64(number("--fault-every", 20.0)),
        grace: Duration::from_secs(20),
        stuck_after: Duration::from_secs(300),
    };
    println!("soak: seed {seed} (repeat it with --seed {seed})");
    match run(&soak).await {
        Ok(report) => {
            println!("\n{}", report.table());
            if report.passed() {
                std::process::ExitCode::SUCCESS
            } else {
                println!("soak FAILED (seed {seed})");
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
