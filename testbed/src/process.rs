//! Child processes of the test bed, and the guarantee that none outlives it.
//!
//! A test bed owned by a test is stopped by `Drop`, also when the test
//! panics. A test bed shared through a `static` is never dropped, and a
//! test binary can be killed; so every test bed also starts a small
//! *reaper*: a shell that holds the read end of a pipe whose write end only
//! this process holds. When this process ends, however it ends, the pipe
//! closes, and the reaper stops the children it was told about and removes
//! the test bed's folder. It ignores SIGINT, so Ctrl-C on `cargo test`
//! still cleans up.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TestBedError;

const REAPER: &str = r#"
trap '' INT TERM HUP
pids=
while read -r line; do
  case "$line" in
    clean) pids= ;;
    detach) pids= ; keep=1 ;;
    *) pids="$pids $line" ;;
  esac
done
for p in $pids; do kill -TERM "$p" 2>/dev/null; done
i=0
while [ $i -lt 50 ]; do
  alive=
  for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ -z "$alive" ] && break
  sleep 0.1
  i=$((i + 1))
done
for p in $pids; do kill -KILL "$p" 2>/dev/null; done
[ -n "$keep" ] || rm -rf "$1"
"#;

/// Stops the children and removes the folder when this process ends.
pub(crate) struct Reaper {
    stdin: Option<ChildStdin>,
    child: Child,
}

impl Reaper {
    pub(crate) fn start(dir: &Path) -> Result<Self, TestBedError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(REAPER)
            .arg("tekfed-testbed-reaper")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| TestBedError::Io {
                what: "starting the test bed's reaper (sh)".into(),
                source,
            })?;
        Ok(Self {
            stdin: child.stdin.take(),
            child,
        })
    }

    /// Tell the reaper about a child it must stop if this process dies.
    pub(crate) fn watch(&mut self, pid: u32) {
        if let Some(stdin) = self.stdin.as_mut() {
            // A failed write means the reaper is gone; Drop still stops
            // the children in the ordinary case, so there is nothing to add.
            let _ = writeln!(stdin, "{pid}");
        }
    }

    /// The children go on without this process (`kubectl tekfed dev up`):
    /// the reaper forgets them and keeps the folder.
    pub(crate) fn detach(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "detach");
        }
        let _ = self.child.wait();
    }

    /// The children were stopped in an orderly way: let the reaper only
    /// remove the folder, and wait for it to finish.
    pub(crate) fn finish(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "clean");
        }
        let _ = self.child.wait();
    }
}

/// One server process of the test bed, with its log file.
pub(crate) struct Process {
    pub(crate) name: String,
    pub(crate) log: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Child,
}

impl Process {
    pub(crate) fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: PathBuf,
        reaper: &mut Reaper,
    ) -> Result<Self, TestBedError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = Self::start(name, program, args, &env, &log, reaper)?;
        Ok(Self {
            name: name.to_owned(),
            log,
            program: program.to_owned(),
            args: args.to_vec(),
            env,
            child,
        })
    }

    /// Start it again after [`Process::stop`], with the same command line,
    /// appending to the same log.
    pub(crate) fn restart(&mut self, reaper: &mut Reaper) -> Result<(), TestBedError> {
        self.stop();
        self.child = Self::start(
            &self.name,
            &self.program,
            &self.args,
            &self.env,
            &self.log,
            reaper,
        )?;
        Ok(())
    }

    fn start(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
        reaper: &mut Reaper,
    ) -> Result<Child, TestBedError> {
        let io = |what: String| move |source| TestBedError::Io { what, source };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io(format!("opening {}", log.display())))?;
        // A process group of its own: Ctrl-C in the terminal that started
        // it does not reach it; the reaper or Drop stops it.
        use std::os::unix::process::CommandExt;
        let child = Command::new(program)
            .process_group(0)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io(format!("starting {name} ({})", program.display())))?;
        reaper.watch(child.id());
        Ok(child)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Err` with the end of the log when the process has exited.
    pub(crate) fn check_alive(&mut self) -> Result<(), TestBedError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(TestBedError::Exited {
                process: self.name.clone(),
                status: status.to_string(),
                log_tail: log_tail(&self.log),
            }),
            Err(source) => Err(TestBedError::Io {
                what: format!("checking on {}", self.name),
                source,
            }),
        }
    }

    /// SIGTERM, then SIGKILL after a grace period; waits for the exit.
    pub(crate) fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(crate::POLL_INTERVAL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send a signal (`KILL`, `STOP`, `CONT`, …) and return; after `KILL`,
    /// wait for the exit.
    pub(crate) fn signal(&mut self, signal: &str) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
        if signal == "KILL" {
            let _ = self.child.wait();
        }
    }

    /// Its command line's arguments, to change before a [`Process::restart`].
    pub(crate) fn args_mut(&mut self) -> &mut Vec<String> {
        &mut self.args
    }

    /// Resident memory of the process now, from `/proc`.
    pub(crate) fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(kb * 1024)
    }
}

/// The last lines of a log, for error messages.
pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
