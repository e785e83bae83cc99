//! The limits store of cluster-scoped limits: a Redis-protocol server (Redis 7,
//! Valkey, a managed one) shared by every replica. [`Store`] runs store/limits.lua for
//! the engine (`zt_policy_core::StoreClient`):
//!
//! - **one round trip** per call, EVALSHA on a pooled blocking connection (the script
//!   is loaded once per server; NOSCRIPT after a restart loads it again);
//! - **a timeout** on everything a call waits for (taking a connection, connecting,
//!   the reply): a call never waits longer than `timeout` (the Caddyfile's, 50 ms by
//!   default), however the store fails (down, slow, unreachable host);
//! - **a breaker**: after a failure the store is "unavailable", and calls fail at once
//!   without touching the network, except one probe per second; the first call that
//!   succeeds makes it "available" again. Each change is reported once (`take_event`).
//!
//! Stores are shared per process by their configuration, so a Caddy reload that keeps
//! the configuration keeps the pool (and its connections).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use zt_policy_core::{StoreClient, StoreEvent};

/// The script every call runs.
pub const SCRIPT: &str = include_str!("../../../store/limits.lua");

/// While unavailable, one call per this interval tries the store.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Connections a store keeps open at most (per process and configuration): calls that
/// overlap open more up to this; past it a call waits for one to come back, within its
/// timeout, rather than open another (a burst of requests never opens a connection
/// each, nor blocks a thread each on the store).
pub const MAX_CONNECTIONS: usize = 128;

/// Where the store is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `redis://[user[:password]@]host[:port][/db]`, `rediss://…` (TLS), `valkey://`,
    /// `valkeys://`, or `unix:///path/to/socket`.
    pub url: String,
    /// PEM file of the CAs that sign a `rediss://` store's certificate (default: the
    /// system's roots).
    pub ca_file: Option<String>,
    pub timeout: Duration,
}

/// Checks a store URL: the scheme, a host, and nothing that lowers its security. The
/// message never contains a password.
pub fn check_url(url: &str) -> Result<(), String> {
    let shown = redact(url);
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("limits store {shown:?}: not a URL (redis://host:6379/0)"))?;
    if !matches!(scheme, "redis" | "rediss" | "valkey" | "valkeys" | "unix") {
        return Err(format!(
            "limits store {shown:?}: the scheme {scheme:?} is not redis, rediss, valkey, valkeys or unix"
        ));
    }
    if rest.contains('#') || rest.contains('?') {
        return Err(format!(
            "limits store {shown:?}: options after ? or # are not accepted (TLS is always verified; use ca_file)"
        ));
    }
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if scheme != "unix" && host.split(['/', ':']).next().unwrap_or("").is_empty() {
        return Err(format!("limits store {shown:?}: no host"));
    }
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "limits store {shown:?}: {}",
                e.to_string().replace(url, &shown)
            )
        })
}

/// The URL with its password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A store and its pool. Calls block the calling thread for at most the timeout.
pub struct Store {
    config: StoreConfig,
    client: redis::Client,
    script: redis::Script,
    pool: Pool,
    /// Replies a new connection waits for before it is ready (AUTH, SELECT; at least 1).
    setup_replies: u32,
    available: AtomicBool,
    /// While unavailable: when the next probe may run (ns since `origin`).
    next_probe: AtomicU64,
    origin: Instant,
    event: Mutex<Option<StoreEvent>>,
    /// Connections opened, ever (tests read it: a reload must not open new ones).
    opened: AtomicU64,
}

impl Store {
    /// The process's store for `config`: the same one for the same configuration
    /// while any engine uses it.
    pub fn shared(config: StoreConfig) -> Result<Arc<Store>, String> {
        static STORES: OnceLock<Mutex<Vec<Weak<Store>>>> = OnceLock::new();
        let mut stores = STORES.get_or_init(Default::default).lock().unwrap();
        stores.retain(|w| w.strong_count() > 0);
        if let Some(s) = stores
            .iter()
            .filter_map(Weak::upgrade)
            .find(|s| s.config == config)
        {
            return Ok(s);
        }
        let store = Arc::new(Store::new(config)?);
        stores.push(Arc::downgrade(&store));
        Ok(store)
    }

    /// A store of its own (not shared with other engines).
    pub fn new(config: StoreConfig) -> Result<Store, String> {
        check_url(&config.url)?;
        if config.timeout.is_zero() || config.timeout > Duration::from_secs(10) {
            return Err(format!(
                "limits store timeout {:?} is not between 1ms and 10s",
                config.timeout
            ));
        }
        let shown = redact(&config.url);
        let tls = config.url.starts_with("rediss://") || config.url.starts_with("valkeys://");
        // No CLIENT SETINFO after connecting: two more replies to wait for, and commands
        // the store's ACL user need not be allowed.
        let info = redis::IntoConnectionInfo::into_connection_info(config.url.as_str())
            .map_err(|e| format!("limits store {shown:?}: {e}"))?;
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        // Setting up a connection waits for one reply per command (AUTH, SELECT), each up
        // to the time it is given: it is given a share, so the whole stays in the timeout.
        let setup_replies =
            1.max(u32::from(settings.password().is_some()) + u32::from(settings.db() != 0));
        let info = info.set_redis_settings(settings);
        let client = match &config.ca_file {
            Some(file) if !tls => {
                return Err(format!(
                    "limits store {shown:?}: ca_file {file:?} is for rediss:// (TLS) stores"
                ))
            }
            Some(file) => {
                let pem = std::fs::read(file)
                    .map_err(|e| format!("limits store ca_file {file:?}: {e}"))?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(format!(
                        "limits store ca_file {file:?}: no PEM certificate in it"
                    ));
                }
                install_crypto_provider();
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            None => {
                if tls {
                    install_crypto_provider();
                }
                redis::Client::open(info)
            }
        }
        .map_err(|e| format!("limits store {shown:?}: {e}"))?;
        Ok(Store {
            config,
            client,
            setup_replies,
            script: redis::Script::new(SCRIPT),
            pool: Pool::new(MAX_CONNECTIONS),
            available: AtomicBool::new(true),
            next_probe: AtomicU64::new(0),
            origin: Instant::now(),
            event: Mutex::new(None),
            opened: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Connections opened since the store was made.
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// PING within the timeout (for `zt-policy check --limits-store … --ping`).
    pub fn ping(&self) -> Result<(), String> {
        let _quiet = SignalsHeld::new();
        let deadline = Instant::now() + self.config.timeout;
        let mut con = self.connection(deadline).map_err(|(e, _)| e)?;
        let pong = redis::cmd("PING").query::<String>(&mut con);
        self.pool.put(con);
        pong.map(|_| ()).map_err(|e| self.describe(&e))
    }

    fn describe(&self, e: &redis::RedisError) -> String {
        let what = if e.is_timeout() {
            format!("no answer within {:?}", self.config.timeout)
        } else {
            e.to_string()
        };
        format!("limits store {}: {what}", redact(&self.config.url))
    }

    /// A pooled connection, or a new one, within the deadline. `Err((why, failed))`:
    /// `failed` when the store failed (not when every connection was busy).
    fn connection(&self, deadline: Instant) -> Result<redis::Connection, (String, bool)> {
        let busy = || {
            format!(
                "limits store {}: no connection free within {:?} ({} in use)",
                redact(&self.config.url),
                self.config.timeout,
                self.pool.max
            )
        };
        match self.pool.take(deadline) {
            Taken::Idle(c) => return Ok(c),
            Taken::Busy => return Err((busy(), false)),
            Taken::OpenOne => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.pool.closed();
            return Err((busy(), false));
        }
        let con = match self
            .client
            .get_connection_with_timeout(left / self.setup_replies)
        {
            Ok(c) => c,
            Err(e) => {
                self.pool.closed();
                return Err((self.describe(&e), true));
            }
        };
        self.opened.fetch_add(1, Ordering::Relaxed);
        // Reads and writes of this connection wait at most the timeout from now on (a
        // new connection's first call has less left).
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        if let Err(e) = con
            .set_read_timeout(Some(left))
            .and_then(|()| con.set_write_timeout(Some(self.config.timeout)))
        {
            self.pool.closed();
            return Err((self.describe(&e), true));
        }
        Ok(con)
    }

    /// One script call; `Err((why, failed))` as for `connection`.
    fn call(&self, keys: &[String], args: &[String]) -> Result<Vec<i64>, (String, bool)> {
        let _quiet = SignalsHeld::new();
        let deadline = Instant::now() + self.config.timeout;
        let mut con = self.connection(deadline)?;
        let mut invocation = self.script.prepare_invoke();
        for k in keys {
            invocation.key(k);
        }
        for a in args {
            invocation.arg(a);
        }
        match invocation.invoke::<Vec<i64>>(&mut con) {
            Ok(reply) => {
                self.pool.put(con);
                Ok(reply)
            }
            Err(e) => {
                // A connection that failed may hold half a reply: closed, not pooled.
                drop(con);
                self.pool.closed();
                Err((self.describe(&e), true))
            }
        }
    }

    fn nanos(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

impl StoreClient for Store {
    fn run(&self, keys: &[String], args: &[String]) -> Result<Vec<i64>, String> {
        if !self.available.load(Ordering::Relaxed) {
            // One probe per interval; every other call fails at once.
            let now = self.nanos();
            let next = self.next_probe.load(Ordering::Relaxed);
            if now < next
                || self
                    .next_probe
                    .compare_exchange(
                        next,
                        now + PROBE_EVERY.as_nanos() as u64,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_err()
            {
                return Err(format!(
                    "limits store {} unavailable (next try within {PROBE_EVERY:?})",
                    redact(&self.config.url)
                ));
            }
        }
        match self.call(keys, args) {
            // Every connection busy: this call falls back, the store is not "down".
            Err((e, false)) => Err(e),
            Ok(reply) => {
                if !self.available.swap(true, Ordering::Relaxed) {
                    *self.event.lock().unwrap() = Some(StoreEvent::Available);
                }
                Ok(reply)
            }
            Err((e, true)) => {
                self.next_probe.store(
                    self.nanos() + PROBE_EVERY.as_nanos() as u64,
                    Ordering::Relaxed,
                );
                if self.available.swap(false, Ordering::Relaxed) {
                    // Connections opened before the failure may be dead too.
                    self.pool.clear();
                    *self.event.lock().unwrap() = Some(StoreEvent::Unavailable(e.clone()));
                }
                Err(e)
            }
        }
    }

    fn take_event(&self) -> Option<StoreEvent> {
        self.event.lock().unwrap().take()
    }
}

/// The store's connections: idle ones, and how many are open (idle or in a call).
struct Pool {
    state: Mutex<PoolState>,
    returned: Condvar,
    max: usize,
}

struct PoolState {
    idle: Vec<redis::Connection>,
    open: usize,
}

enum Taken {
    Idle(redis::Connection),
    /// Room for one more: the caller opens it (and calls `closed` if that fails).
    OpenOne,
    /// All `max` are in calls, and none came back before the deadline.
    Busy,
}

impl Pool {
    fn new(max: usize) -> Pool {
        Pool {
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
            max,
        }
    }

    fn take(&self, deadline: Instant) -> Taken {
        let mut st = self.state.lock().unwrap();
        loop {
            if let Some(c) = st.idle.pop() {
                return Taken::Idle(c);
            }
            if st.open < self.max {
                st.open += 1;
                return Taken::OpenOne;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Taken::Busy;
            }
            st = self.returned.wait_timeout(st, left).unwrap().0;
        }
    }

    fn put(&self, c: redis::Connection) {
        self.state.lock().unwrap().idle.push(c);
        self.returned.notify_one();
    }

    /// A connection taken or being opened is gone.
    fn closed(&self) {
        self.state.lock().unwrap().open -= 1;
        self.returned.notify_one();
    }

    /// Closes every idle connection.
    fn clear(&self) {
        let mut st = self.state.lock().unwrap();
        st.open -= st.idle.len();
        st.idle.clear();
        drop(st);
        self.returned.notify_all();
    }
}

/// While alive, the calling thread holds back asynchronous signals. A socket read with
/// a timeout (SO_RCVTIMEO) that a signal interrupts fails with EINTR even under
/// SA_RESTART, and the client cannot tell how much of the reply it had read; in Caddy
/// the Go runtime signals its threads (SIGURG to preempt, SIGPROF to profile), so a
/// store call holds them back until it is done. Signals for the process go to another
/// thread meanwhile; synchronous ones (a fault) are never held.
struct SignalsHeld {
    previous: libc::sigset_t,
}

impl SignalsHeld {
    fn new() -> SignalsHeld {
        // SAFETY: sigset_t is plain data, initialised by sigfillset before use; the
        // mask is restored by Drop on this same thread.
        unsafe {
            let mut held: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut held);
            for sync in [
                libc::SIGSEGV,
                libc::SIGBUS,
                libc::SIGFPE,
                libc::SIGILL,
                libc::SIGTRAP,
                libc::SIGABRT,
            ] {
                libc::sigdelset(&mut held, sync);
            }
            let mut previous: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &held, &mut previous);
            SignalsHeld { previous }
        }
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        // SAFETY: restores the mask `new` saved, on the thread that saved it.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut());
        }
    }
}

/// rustls needs a process-wide crypto provider when more than one could be in the
/// build; aws-lc-rs is the one the engine already uses.
fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        for good in [
            "redis://127.0.0.1:6379/0",
            "redis://user:pass@valkey:6379/2",
            "rediss://:secret@store.internal",
            "valkey://localhost",
            "unix:///run/valkey.sock",
        ] {
            check_url(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, says) in [
            ("http://127.0.0.1:6379", "the scheme \"http\""),
            ("127.0.0.1:6379", "not a URL"),
            ("redis://", "no host"),
            ("redis://:pw@:6379", "no host"),
            ("rediss://h:6379/#insecure", "options after ? or #"),
            ("redis://h:6379/?protocol=resp3", "options after ? or #"),
            ("redis://u:hunter2@h:notaport", "limits store"),
        ] {
            let e = check_url(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("hunter2") && !e.contains(":pw@"), "{e}");
        }
        assert_eq!(redact("redis://u:p@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn a_store_that_is_not_there_fails_within_the_timeout_then_at_once() {
        // A port nothing listens on: refused at once; the breaker then answers without
        // the network until the next probe.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let store = Store::new(StoreConfig {
            url: format!("redis://127.0.0.1:{port}"),
            ca_file: None,
            timeout: Duration::from_millis(200),
        })
        .unwrap();
        let e = store
            .run(&[], &["0".into(), "admit".into(), "-".into()])
            .unwrap_err();
        assert!(e.contains("limits store redis://127.0.0.1"), "{e}");
        assert!(matches!(
            store.take_event(),
            Some(StoreEvent::Unavailable(_))
        ));
        assert_eq!(store.take_event(), None, "each change is reported once");
        let e = store.run(&[], &[]).unwrap_err();
        assert!(e.contains("unavailable (next try"), "{e}");
        assert_eq!(store.connections_opened(), 0);
    }

    #[test]
    fn ca_file_is_for_tls_and_must_hold_a_certificate() {
        let cfg = |url: &str, ca: &str| StoreConfig {
            url: url.into(),
            ca_file: Some(ca.into()),
            timeout: Duration::from_millis(50),
        };
        let e = Store::new(cfg("redis://h", "/etc/hostname")).err().unwrap();
        assert!(e.contains("is for rediss://"), "{e}");
        let e = Store::new(cfg("rediss://h", "/nonexistent/ca.pem"))
            .err()
            .unwrap();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let e = Store::new(cfg("rediss://h", "/etc/hostname"))
            .err()
            .unwrap();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
