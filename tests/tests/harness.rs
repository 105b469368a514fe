//! The test bed leaves nothing behind: no process and no folder, whether it
//! is dropped, dropped while a test panics, or its process is killed.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tekfed_testbed::{TestBed, eventually};

fn alive(pid: u32) -> bool {
    // A zombie is not alive: it has exited and waits only for its parent.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

fn pids_of(dir: &std::path::Path) -> Vec<u32> {
    // Every process of a test bed has the test bed's folder in its command line.
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .filter(|pid| alive(*pid))
        .collect()
}

#[test]
fn a_test_bed_that_panics_leaves_nothing_behind() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let bed = runtime.block_on(TestBed::start(1)).unwrap();
        let pids = pids_of(bed.dir());
        tx.send((bed.dir().to_owned(), pids)).unwrap();
        panic!("a test fails while holding its test bed");
    })
    .join();
    assert!(outcome.is_err(), "the thread was meant to panic");
    let (dir, pids): (PathBuf, Vec<u32>) = rx.recv().unwrap();
    assert!(
        pids.len() >= 3,
        "expected etcd and two API servers, found {pids:?}"
    );
    let left: Vec<u32> = pids.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left running: {left:?}");
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

#[tokio::test]
async fn a_killed_test_process_leaves_nothing_behind() {
    // The testbed_up example holds a test bed; SIGKILL gives it no chance to
    // clean up, so only the reaper can.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(&cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "tekfed-tests",
            "--example",
            "testbed_up",
        ])
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(built.success());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(target.join("debug/examples/testbed_up"))
        .arg("1")
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let path = out.path().to_owned();
    let kubeconfig = eventually("the test bed to come up", Duration::from_secs(180), || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        async move {
            text.lines()
                .find_map(|l| l.strip_prefix("export KUBECONFIG="))
                .map(PathBuf::from)
        }
    })
    .await;
    let dir = kubeconfig.parent().unwrap().to_owned();
    let pids = pids_of(&dir);
    assert!(
        pids.len() >= 3,
        "expected etcd and two API servers, found {pids:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    eventually(
        "the reaper to stop the servers and remove the folder",
        Duration::from_secs(30),
        || {
            let done = pids.iter().all(|p| !alive(*p)) && !dir.exists();
            async move { done.then_some(()) }
        },
    )
    .await;
}
