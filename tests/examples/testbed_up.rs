//! Start a test bed (hub + N members, default 2) and keep it running until
//! Ctrl-C, printing the kubeconfig to use: handy to poke at the real API
//! servers by hand. `cargo run -p tekfed-tests --example testbed_up -- 3`

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let members = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(2);
    let bed = tekfed_testbed::TestBed::start(members).await?;
    println!("test bed up in {:.1?}", bed.started_in);
    for (process, rss) in bed.memory() {
        println!(
            "  {process:<28} {:>6.0} MiB",
            rss as f64 / (1024.0 * 1024.0)
        );
    }
    println!("export KUBECONFIG={}", bed.kubeconfig().display());
    println!(
        "contexts: {}",
        bed.clusters()
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "kubectl is at {}/kubectl; Ctrl-C stops everything",
        bed.bin_dir().display()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
