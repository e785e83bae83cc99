//! The one clock the core reads. Production uses std's monotonic `Instant` (the
//! limits' buckets) plus the wall clock for token `exp`/`nbf`; tests use a manual clock
//! they move by hand, so no test sleeps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug)]
pub struct EngineClock(Inner);

#[derive(Clone, Debug)]
enum Inner {
    System,
    Manual(Arc<ManualState>),
}

#[derive(Debug)]
struct ManualState {
    origin: Instant,
    unix_origin: u64,
    offset_nanos: AtomicU64,
}

impl EngineClock {
    /// The production clock.
    pub fn system() -> Self {
        EngineClock(Inner::System)
    }

    /// A clock that stands still until `advance` is called; `unix_seconds` is the wall
    /// time it starts at.
    pub fn manual(unix_seconds: u64) -> Self {
        EngineClock(Inner::Manual(Arc::new(ManualState {
            origin: Instant::now(),
            unix_origin: unix_seconds,
            offset_nanos: AtomicU64::new(0),
        })))
    }

    /// Moves a manual clock forward. A system clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let Inner::Manual(state) = &self.0 {
            state
                .offset_nanos
                .fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
        }
    }

    pub fn is_manual(&self) -> bool {
        matches!(self.0, Inner::Manual(_))
    }

    /// Seconds since the Unix epoch, for token `exp`, `nbf` and `iat`.
    pub fn unix_now(&self) -> u64 {
        match &self.0 {
            Inner::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            Inner::Manual(state) => {
                state.unix_origin + state.offset_nanos.load(Ordering::SeqCst) / 1_000_000_000
            }
        }
    }
}

/// The origin of the system clock's nanoseconds: one per process, so engines that
/// share buckets across a reload read the same time line.
fn process_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl EngineClock {
    pub fn now(&self) -> Instant {
        match &self.0 {
            Inner::System => Instant::now(),
            Inner::Manual(state) => {
                state.origin + Duration::from_nanos(state.offset_nanos.load(Ordering::SeqCst))
            }
        }
    }

    /// Nanoseconds on the limits' time line: since the process's origin (system) or
    /// since the clock was made (manual). u64 nanoseconds last 584 years.
    pub fn nanos(&self) -> u64 {
        match &self.0 {
            Inner::System => Instant::now()
                .saturating_duration_since(process_origin())
                .as_nanos() as u64,
            Inner::Manual(state) => state.offset_nanos.load(Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = EngineClock::manual(1_000);
        let a = clock.now();
        assert_eq!(clock.now(), a);
        assert_eq!(clock.unix_now(), 1_000);
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(clock.now() - a, Duration::from_millis(1_500));
        assert_eq!(clock.unix_now(), 1_001);
    }
}
