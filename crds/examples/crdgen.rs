//! Writes the tekfed CRDs to `crds/manifests/` (or the folder given).
//! Run it through `make crds` after changing a type.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests"));
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in tekfed_crds::manifests::manifests() {
        std::fs::write(dir.join(&file), yaml)?;
        println!("wrote {}", dir.join(file).display());
    }
    Ok(())
}
