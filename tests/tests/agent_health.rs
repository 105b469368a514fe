//! The agent's metrics and probes against real API servers, as the
//! kubelet and Prometheus see them: `/readyz` turns 200 once the agent
//! heartbeats, `/metrics` counts the heartbeats, and when the hub's API
//! server becomes unreachable `/readyz` answers 503 saying so while
//! `/healthz` stays 200 (a restart would not bring the hub back); readiness
//! returns with the hub.
//!
//! The agent reaches the hub through a TCP proxy of the test's, so cutting
//! it off is closing the proxy: no API server is stopped, and nothing else
//! on the test bed notices.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tekfed_testbed::federation::scrape;
use tekfed_testbed::{HUB, TestBed, binary, eventually};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

const MEMBER: &str = "member-1";
const AGENT: &str = "agent-member-1";
const WAIT: Duration = Duration::from_secs(120);

/// `GET path` from `addr`: the status code and the body.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: tekfed\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.trim_end().to_owned();
    Some((status, body))
}

/// The value of the series of `metric` whose labels include `label`.
fn sample(text: &str, metric: &str, label: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{metric}{{")) && l.contains(label))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

fn heartbeats(addr: &str, outcome: &str) -> Option<f64> {
    let text = scrape(addr).ok()?;
    sample(
        &text,
        "tekfed_agent_heartbeats_total",
        &format!("outcome=\"{outcome}\""),
    )
}

/// Copy bytes one way until either side closes or fails.
async fn pump(from: &TcpStream, to: &TcpStream) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        if from.readable().await.is_err() {
            return;
        }
        let n = match from.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            // Readiness can be spurious.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        let mut sent = 0;
        while sent < n {
            if to.writable().await.is_err() {
                return;
            }
            match to.try_write(&buf[sent..n]) {
                Ok(k) => sent += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }
}

/// A TCP proxy on `listen` to `upstream`. Aborting its task closes the
/// listener and every connection through it at once.
async fn proxy(listen: SocketAddr, upstream: SocketAddr) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind(listen).await.expect("binding the proxy");
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        // Owned by this task: aborting it drops (and aborts) them all.
        let mut connections = JoinSet::new();
        while let Ok((inbound, _)) = listener.accept().await {
            connections.spawn(async move {
                let Ok(outbound) = TcpStream::connect(upstream).await else {
                    return;
                };
                tokio::select! {
                    () = pump(&inbound, &outbound) => {}
                    () = pump(&outbound, &inbound) => {}
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_is_ready_while_it_heartbeats_and_says_why_not_when_the_hub_is_gone() {
    // A bed of its own: one member is enough, and lighter than the shared
    // three.
    let bed = TestBed::start(1).await.unwrap();
    bed.register_member(MEMBER, BTreeMap::new()).await.unwrap();
    // The hub controller makes the member's MemberReport, which the
    // agent's heartbeats write into.
    bed.start_hub("tekfed-hub", &[]).unwrap();

    // The agent's narrow hub identity, with the hub's address swapped for
    // the proxy's.
    let hub_server = bed
        .clusters()
        .iter()
        .find(|c| c.name == HUB)
        .unwrap()
        .server
        .clone();
    let upstream: SocketAddr = hub_server
        .trim_start_matches("https://")
        .parse()
        .expect("the hub's server is https://<ip>:<port>");
    let (proxy_addr, proxying) = proxy("127.0.0.1:0".parse().unwrap(), upstream).await;
    let identity = std::fs::read_to_string(bed.agent_identity(MEMBER).await.unwrap()).unwrap();
    assert!(identity.contains(&hub_server), "{identity}");
    let proxied = bed.dir().join("agent-health-hub.kubeconfig");
    std::fs::write(
        &proxied,
        identity.replace(&hub_server, &format!("https://{proxy_addr}")),
    )
    .unwrap();
    let args: Vec<String> = [
        "--cluster-name",
        MEMBER,
        "--kubeconfig",
        &bed.kubeconfig().to_string_lossy(),
        "--context",
        MEMBER,
        "--hub-kubeconfig",
        &proxied.to_string_lossy(),
        "--heartbeat-interval",
        "1",
        "--metrics-addr",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    bed.spawn(
        AGENT,
        &binary("tekfed-agent"),
        &args,
        &[("RUST_LOG", "info")],
    )
    .unwrap();
    let addr = eventually("the agent to log its metrics address", WAIT, || {
        let addr = bed.metrics_addr(AGENT);
        async move { addr }
    })
    .await;

    // Ready once it heartbeats.
    let ready = eventually("/readyz to answer 200", WAIT, || {
        let answer = get(&addr, "/readyz");
        async move { answer.filter(|(status, _)| *status == 200) }
    })
    .await;
    assert!(ready.1.starts_with("ok: heartbeat written"), "{ready:?}");
    assert_eq!(get(&addr, "/healthz"), Some((200, "ok".to_owned())));

    // Heartbeats are counted as they are written, and the last one's time
    // is now's.
    let first = heartbeats(&addr, "written").expect("a heartbeat counted");
    assert!(first >= 1.0, "{first}");
    eventually("the heartbeat counter to rise", WAIT, || {
        let now = heartbeats(&addr, "written");
        async move { now.filter(|n| *n > first) }
    })
    .await;
    let text = scrape(&addr).unwrap();
    let last = sample(
        &text,
        "tekfed_agent_last_heartbeat_timestamp_seconds",
        "cluster=\"member-1\"",
    )
    .unwrap_or_else(|| panic!("no last heartbeat time in\n{text}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - last).abs() < 60.0,
        "last heartbeat at {last}, now {now}"
    );

    // The hub becomes unreachable: not ready, saying why; still alive.
    proxying.abort();
    let _ = proxying.await;
    let not_ready = eventually("/readyz to answer 503", WAIT, || {
        let answer = get(&addr, "/readyz");
        async move { answer.filter(|(status, _)| *status == 503) }
    })
    .await;
    assert!(
        not_ready
            .1
            .starts_with("the last heartbeat to the hub failed:")
            && !not_ready.1.contains('\n'),
        "{not_ready:?}"
    );
    assert_eq!(get(&addr, "/healthz"), Some((200, "ok".to_owned())));
    assert!(
        heartbeats(&addr, "failed").is_some_and(|n| n >= 1.0),
        "{}",
        scrape(&addr).unwrap_or_default()
    );

    // The hub is back (on the same address): ready again.
    let (_, proxying) = proxy(proxy_addr, upstream).await;
    eventually("/readyz to answer 200 again", WAIT, || {
        let answer = get(&addr, "/readyz");
        async move { answer.filter(|(status, _)| *status == 200) }
    })
    .await;
    proxying.abort();
}
