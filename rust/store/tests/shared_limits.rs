//! Cluster-scoped limits on a real redis-server (Debian's; scripts/install-deps.sh
//! installs it, the test starts it on loopback): two engines, each with a store client
//! of its own as two replicas have, share buckets, budgets that settle and in-flight
//! caps; a lease a crashed replica never ends expires; a store that is down, or that
//! never answers, gets each `on_failure` mode; the shared limit resumes when the store
//! is back. Real time: the store's clock decides, as in production.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zt_policy_core::{
    Decision, Ending, Engine, EngineClock, OnFailure, Reason, Request, SettleRule, StoreEvent,
    StoreOutcome, Usage,
};
use zt_policy_store::{Store, StoreConfig};

const POLICY: &str = r#"
[settings]
require_identity = false
identity = 'request.headers["x-user"]'
[[rule]]
name = "allow-all"
effect = "allow"
when = 'true'
[[concurrency]]
name = "streams"
max = 2
scope = "cluster"
lease_ttl = "2s"
[[limit]]
name = "requests"
rate = "10/h"
burst = 10
scope = "cluster"
[[limit]]
name = "tokens"
rate = "1000/h"
burst = 1000
cost = '100'
settle = "usage"
scope = "cluster"
"#;

struct Redis {
    child: Child,
    port: u16,
    _dir: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    fn start(port: u16) -> Redis {
        let dir = std::env::temp_dir().join(format!("ztp-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let server = ["redis-server", "valkey-server"]
            .into_iter()
            .find(|s| Command::new(s).arg("--version").output().is_ok())
            .expect("redis-server is missing: scripts/install-deps.sh installs it");
        let child = Command::new(server)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--dir", dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child,
            port,
            _dir: TempDir(dir),
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A replica: an engine with a store client of its own.
fn replica(port: u16, on_failure: OnFailure, timeout: Duration) -> Engine {
    replica_at(&format!("redis://127.0.0.1:{port}/0"), on_failure, timeout)
}

fn replica_at(url: &str, on_failure: OnFailure, timeout: Duration) -> Engine {
    let mut e = Engine::from_toml(POLICY, "p.toml", EngineClock::system()).unwrap();
    let store = Store::new(StoreConfig {
        url: url.to_owned(),
        ca_file: None,
        timeout,
    })
    .unwrap();
    e.set_store(Arc::new(store), on_failure);
    e
}

fn decide<'e>(e: &'e Engine, user: &str) -> Decision<'e> {
    let headers = [("x-user", user)];
    e.decide(&Request {
        method: "POST",
        scheme: "https",
        host: "h",
        path: "/v1/chat/completions",
        query: "",
        remote_ip: "127.0.0.1",
        headers: &headers,
        client_cert_der: None,
        body: b"",
        body_size: 0,
    })
}

fn usage(total: u64) -> Ending {
    Ending::Usage(Usage {
        prompt_tokens: None,
        completion_tokens: None,
        total_tokens: Some(total),
    })
}

const MS50: Duration = Duration::from_millis(50);

#[test]
fn replicas_share_buckets_budgets_and_caps() {
    let redis = Redis::start(free_port());
    let (a, b) = (
        replica(redis.port, OnFailure::Local, MS50),
        replica(redis.port, OnFailure::Local, MS50),
    );
    // The cap (2) holds across replicas, and the decision says the store judged it.
    let d1 = decide(&a, "alice");
    assert!(d1.allowed, "{d1:?}");
    assert_eq!(d1.store, Some(StoreOutcome::Shared));
    assert_eq!(d1.reserved, vec![("tokens", 100)]);
    let d2 = decide(&b, "alice");
    assert!(d2.allowed, "{d2:?}");
    let d3 = decide(&a, "alice");
    assert_eq!(
        (d3.status, d3.reason),
        (429, Reason::ConcurrencyLimit),
        "{d3:?}"
    );
    assert_eq!(d3.limit.as_ref().unwrap().name, "streams");
    // Another identity has its own slots.
    let other = decide(&b, "bob");
    assert!(other.allowed);
    b.settle(other.lease.unwrap(), Ending::Keep).unwrap();
    // Settled on replica a: 30 of 100 used; b sees the budget moved by exactly 30
    // (two reservations of 100 were taken; one is still open on b).
    let s = a.settle(d1.lease.unwrap(), usage(30)).unwrap();
    assert_eq!((s[0].rule, s[0].charged), (SettleRule::Usage, 30));
    let d4 = decide(&b, "alice");
    assert!(d4.allowed, "the slot a released is free on b: {d4:?}");
    let tokens = d4.limit.as_ref().unwrap().headers.ratelimit.clone();
    assert!(
        tokens.contains("\"tokens\";r=770;"),
        "1000 - 30 - 100 (open on b) - 100 (this one): {tokens}"
    );
    // An excess is charged in the shared bucket too.
    let s = b.settle(d2.lease.unwrap(), usage(250)).unwrap();
    assert_eq!((s[0].charged, s[0].unbilled), (250, 0));
    b.settle(d4.lease.unwrap(), Ending::Refund).unwrap();
    // The request limit (10/h, shared): 3 taken so far by alice on both replicas (d1,
    // d2, d4: d3 was refused by the cap in the same atomic call, so charged nothing).
    let mut allowed = 3;
    for i in 0..10 {
        let e = if i % 2 == 0 { &a } else { &b };
        let d = decide(e, "alice");
        if d.allowed {
            allowed += 1;
            e.settle(d.lease.unwrap(), Ending::Refund).unwrap();
        } else {
            assert_eq!((d.status, d.reason), (429, Reason::RateLimited), "{d:?}");
            assert!(d.limit.as_ref().unwrap().retry_after_secs.unwrap() >= 1);
        }
    }
    assert_eq!(allowed, 10, "one bucket of 10 for both replicas");
}

#[test]
fn a_crashed_replicas_slots_come_back_when_their_leases_expire() {
    let redis = Redis::start(free_port());
    let crashed = replica(redis.port, OnFailure::Local, MS50);
    for _ in 0..2 {
        assert!(decide(&crashed, "carol").allowed);
    }
    drop(crashed); // never settles
    let b = replica(redis.port, OnFailure::Local, MS50);
    let d = decide(&b, "carol");
    assert_eq!(d.reason, Reason::ConcurrencyLimit, "{d:?}");
    std::thread::sleep(Duration::from_millis(2100)); // lease_ttl = "2s"
    let d = decide(&b, "carol");
    assert!(d.allowed, "expired leases free their slots: {d:?}");
}

#[test]
fn a_store_that_is_down_gets_each_mode_and_the_shared_limit_resumes() {
    let port = free_port();
    let mut redis = Redis::start(port);
    let local = replica(port, OnFailure::Local, MS50);
    let deny = replica(port, OnFailure::Deny, MS50);
    let allow = replica(port, OnFailure::Allow, MS50);
    for e in [&local, &deny, &allow] {
        let d = decide(e, "dave");
        assert_eq!(d.store, Some(StoreOutcome::Shared));
        e.settle(d.lease.unwrap(), Ending::Refund).unwrap();
    }
    redis.stop();

    // local: this replica's own buckets; the change is reported once.
    let d = decide(&local, "dave");
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.store, Some(StoreOutcome::Local));
    assert!(
        matches!(&d.store_event, Some(StoreEvent::Unavailable(why)) if why.contains("limits store redis://127.0.0.1")),
        "{:?}",
        d.store_event
    );
    assert_eq!(d.reserved, vec![("tokens", 100)], "a local reservation");
    local.settle(d.lease.unwrap(), usage(10)).unwrap();
    assert_eq!(local.limit_remaining("tokens", "dave"), Some(990));
    let d = decide(&local, "dave");
    assert_eq!(
        (d.store, &d.store_event),
        (Some(StoreOutcome::Local), &None)
    );
    local.settle(d.lease.unwrap(), Ending::Keep).unwrap();
    // The local cap holds too (2).
    let held: Vec<_> = (0..2).map(|_| decide(&local, "erin")).collect();
    assert!(held.iter().all(|d| d.allowed));
    assert_eq!(decide(&local, "erin").reason, Reason::ConcurrencyLimit);
    for d in held {
        local.settle(d.lease.unwrap(), Ending::Keep).unwrap();
    }

    // deny: 503, fail closed.
    let d = decide(&deny, "dave");
    assert!(!d.allowed);
    assert_eq!(
        (d.status, d.reason),
        (503, Reason::StoreUnavailable),
        "{d:?}"
    );
    assert_eq!(d.store, Some(StoreOutcome::Denied));
    assert!(d.lease.is_none(), "nothing held by a refusal");

    // allow: not limited, nothing held.
    let d = decide(&allow, "dave");
    assert!(d.allowed);
    assert_eq!(d.store, Some(StoreOutcome::Allowed));
    assert!(d.lease.is_none() && d.reserved.is_empty(), "{d:?}");

    // Back: within a second (one probe a second) the store judges again, and says so once.
    let _redis = Redis::start(port);
    let deadline = Instant::now() + Duration::from_secs(5);
    let back = loop {
        let d = decide(&deny, "dave");
        if d.store == Some(StoreOutcome::Shared) {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "the store did not come back: {d:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(back.allowed, "{back:?}");
    assert_eq!(back.store_event, Some(StoreEvent::Available));
    assert_eq!(decide(&deny, "dave").store_event, None);
}

#[test]
fn a_store_that_never_answers_costs_a_request_at_most_the_timeout() {
    // Accepts connections and never replies (a hung server, a black-holed network). A
    // new connection waits for replies before the call's own (AUTH, SELECT): with a
    // password and a database, too, the whole stays within the timeout.
    for (userinfo, db) in [("", 0), ("zt:pw@", 3)] {
        let hung = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = hung.local_addr().unwrap().port();
        let timeout = Duration::from_millis(200);
        let e = replica_at(
            &format!("redis://{userinfo}127.0.0.1:{port}/{db}"),
            OnFailure::Deny,
            timeout,
        );
        let start = Instant::now();
        let d = decide(&e, "frank");
        let first = start.elapsed();
        assert_eq!(
            (d.status, d.reason),
            (503, Reason::StoreUnavailable),
            "{d:?}"
        );
        assert!(
            matches!(&d.store_event, Some(StoreEvent::Unavailable(why)) if why.contains("within")),
            "{:?}",
            d.store_event
        );
        // The bound, not a speed: a request waits the timeout (plus scheduling), not a
        // hung server's forever, nor the timeout once per reply.
        assert!(
            first < timeout + Duration::from_millis(100),
            "{userinfo}/{db}: waited {first:?}"
        );
        // Until the next probe, requests do not touch the network: no new connection.
        hung.set_nonblocking(true).unwrap();
        let opened = std::iter::from_fn(|| hung.accept().ok()).count();
        assert_eq!(opened, 1, "the first request's connection");
        for _ in 0..100 {
            assert_eq!(decide(&e, "frank").status, 503);
        }
        assert!(
            hung.accept().is_err(),
            "a request tried the store while it is unavailable"
        );
    }
}

extern "C" fn ignore(_: libc::c_int) {}

#[test]
fn signals_to_the_calling_thread_do_not_break_a_store_call() {
    // Caddy's Go runtime signals its threads (SIGURG) while they wait in a store call;
    // a socket read with a timeout is then not restarted (EINTR). Found by
    // BenchmarkStoreClient; here a thread is signalled every 20 µs through 2,000 calls.
    let redis = Redis::start(free_port());
    let e = replica(redis.port, OnFailure::Deny, MS50);
    // SAFETY: a handler that does nothing, installed with SA_RESTART as Go installs its own.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let caller = s.spawn(|| {
            tx.send(unsafe { libc::pthread_self() }).unwrap();
            let mut refused = Vec::new();
            for i in 0..2000 {
                let d = decide(&e, &format!("sig-{}", i % 50));
                if d.store != Some(StoreOutcome::Shared) {
                    refused.push(format!("{:?}", d.store_event));
                } else if let Some(lease) = d.lease {
                    e.settle(lease, Ending::Refund);
                }
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            refused
        });
        // SAFETY (below): the pthread_t of a thread that lives until `done`.
        let thread = rx.recv().unwrap();
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
            std::thread::sleep(Duration::from_micros(20));
        }
        let refused = caller.join().unwrap();
        assert!(
            refused.is_empty(),
            "{} of 2000 failed: {:?}",
            refused.len(),
            &refused[..1]
        );
    });
}

#[test]
fn a_burst_opens_at_most_the_pools_connections() {
    // 150 requests at once against a store that never answers: 128 connections
    // (MAX_CONNECTIONS), the other 22 calls wait for one within their timeout instead
    // of opening more. (Counted while every call still waits: 0.5 s into a 2 s timeout.)
    let hung = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hung.local_addr().unwrap().port();
    let e = replica(port, OnFailure::Deny, Duration::from_secs(2));
    let barrier = std::sync::Barrier::new(150);
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..150)
            .map(|i| {
                let (e, barrier) = (&e, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    let status = decide(e, &format!("burst-{i}")).status;
                    (status, start.elapsed())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        hung.set_nonblocking(true).unwrap();
        let held: Vec<_> = std::iter::from_fn(|| hung.accept().ok()).collect();
        assert_eq!(held.len(), zt_policy_store::MAX_CONNECTIONS);
        let done: Vec<(u16, Duration)> = calls.into_iter().map(|c| c.join().unwrap()).collect();
        assert!(done.iter().all(|(s, _)| *s == 503), "{done:?}");
        let longest = done.iter().map(|(_, t)| *t).max().unwrap();
        let mut ts: Vec<u128> = done.iter().map(|(_, t)| t.as_millis()).collect();
        ts.sort();
        eprintln!("times {:?} {:?}", &ts[..30], &ts[100..]);
        // A bound, not a speed: no call waits much past its timeout.
        assert!(longest < Duration::from_millis(2900), "{longest:?}");
    });
}
