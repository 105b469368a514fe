//! `kubectl-tekfed`: the operator's command line (works as `kubectl tekfed`
//! when on PATH). This first cut prints the CRDs; join, cordon, drain and
//! status come with the cluster-lifecycle issue.

use clap::{Parser, Subcommand};

/// Operate a tekfed federation of Tekton clusters.
#[derive(Parser, Debug)]
#[command(name = "kubectl-tekfed", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the tekfed CRDs as YAML, to install them on a hub.
    #[command(after_help = "Example:\n  kubectl tekfed crds | kubectl apply --server-side -f -")]
    Crds,
}

fn main() {
    match Args::parse().command {
        Command::Crds => {
            let docs: Vec<String> = tekfed_crds::manifests::manifests()
                .into_iter()
                .map(|(_, yaml)| yaml)
                .collect();
            print!("{}", docs.join("---\n"));
        }
    }
}
