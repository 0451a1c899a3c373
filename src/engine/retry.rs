//! How long to wait before retrying a failed attempt: exponential backoff with jitter, capped.
//!
//! The n-th retry waits `retry_delay × retry_backoff^(n-1)`, capped at [`MAX_DELAY`], then a random
//! ±10 % so that many steps failing together (a database restart) do not all retry in the same second.

use std::time::Duration;

/// No retry waits longer than this.
pub const MAX_DELAY: Duration = Duration::from_secs(30 * 60);

/// The wait before retry number `retry` (1 = the first retry).
pub fn delay(base: Duration, backoff: f64, retry: u32) -> Duration {
    let exp = backoff
        .max(1.0)
        .powi(retry.saturating_sub(1).min(60) as i32);
    let secs = (base.as_secs_f64() * exp).min(MAX_DELAY.as_secs_f64());
    let jitter = 0.9 + 0.2 * rand::random::<f64>();
    Duration::from_secs_f64((secs * jitter).min(MAX_DELAY.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let d1 = delay(Duration::from_secs(10), 2.0, 1).as_secs_f64();
        let d3 = delay(Duration::from_secs(10), 2.0, 3).as_secs_f64();
        assert!((9.0..=11.0).contains(&d1), "{d1}");
        assert!((36.0..=44.0).contains(&d3), "{d3}");
        let capped = delay(Duration::from_secs(600), 10.0, 20);
        assert!(capped <= MAX_DELAY);
        assert_eq!(delay(Duration::ZERO, 2.0, 5), Duration::ZERO);
    }
}
