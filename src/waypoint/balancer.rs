//! Which endpoint of a backend gets the next request, and which endpoints are sat out.
//!
//! A backend's DestinationPolicy picks the [`Selection`]: least request (the default),
//! round robin, or a consistent hash of the request's key (rendezvous hashing: an endpoint
//! leaving moves only its own keys). Whatever the selection, a retry avoids the endpoints
//! already tried and ejected endpoints sit out.
//!
//! Least request is power of two choices (P2C): two endpoints drawn at random, the cheaper
//! wins, where cost is a peak-EWMA latency estimate times (outstanding requests + 1). The
//! estimate jumps to a slower response at once and falls back gently (EWMA, time constant
//! `tau`), and it also decays while an endpoint is not used, so one that was slow is tried
//! again later rather than never. An endpoint never measured costs nothing: new endpoints
//! are probed first. A failed attempt never lowers the estimate, so failing fast draws no
//! traffic.
//!
//! Outlier ejection: an endpoint whose last `consecutive_failures` attempts all failed (a
//! 5xx, a connect failure, a reset, a timed-out attempt) is ejected for the base time,
//! longer each time it is ejected again (base x ejections, at most `max_ejection`). Never
//! more than `max_ejected_share` of a backend's endpoints are sat out (at least one may be
//! unless the share is 0, which turns ejection off; never all): the ones ejected longest ago come back first. An ejected
//! endpoint returns when its time is up and is probed by live traffic; if it still fails,
//! it is ejected again, for longer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counter: endpoints ejected, by endpoint.
pub const EJECTIONS_TOTAL: &str = "weft_waypoint_outlier_ejections_total";

/// When an endpoint is ejected and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierConfig {
    /// Failed attempts in a row that eject an endpoint (0: never eject).
    pub consecutive_failures: u32,
    /// The first ejection's length; the n-th lasts n times as long.
    pub base_ejection: Duration,
    /// The longest an ejection lasts.
    pub max_ejection: Duration,
    /// The largest share of a backend's endpoints ejected at once.
    pub max_ejected_share: f64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_share: 0.5,
        }
    }
}

/// The peak-EWMA time constant: how fast the estimate forgets.
const TAU: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Health {
    /// The latency estimate, in nanoseconds, as of `stamp`.
    cost_ns: f64,
    stamp: Instant,
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    /// When the current or last ejection started (for which comes back first).
    ejected_at: Option<Instant>,
    ejections: u32,
}

/// What the balancer knows of one endpoint.
#[derive(Debug)]
pub struct EndpointStats {
    /// `ip:targetPort`.
    pub addr: SocketAddr,
    outstanding: AtomicUsize,
    health: Mutex<Health>,
}

/// Held while a request is outstanding on an endpoint.
#[derive(Debug)]
pub struct InFlight {
    stats: Arc<EndpointStats>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl EndpointStats ===

impl EndpointStats {
    fn new(addr: SocketAddr, now: Instant) -> Self {
        EndpointStats {
            addr,
            outstanding: AtomicUsize::new(0),
            health: Mutex::new(Health {
                cost_ns: 0.0,
                stamp: now,
                consecutive_failures: 0,
                ejected_until: None,
                ejected_at: None,
                ejections: 0,
            }),
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request starts on this endpoint; it is outstanding until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight {
            stats: self.clone(),
        }
    }

    /// Requests outstanding now.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// The latency estimate at `now`, decayed since it was last measured.
    fn decayed_cost(health: &Health, now: Instant) -> f64 {
        let idle = now.saturating_duration_since(health.stamp).as_secs_f64();
        health.cost_ns * (-idle / TAU.as_secs_f64()).exp()
    }

    /// P2C's cost at `now`.
    fn load(&self, now: Instant) -> f64 {
        let cost = Self::decayed_cost(&self.health(), now);
        cost * (self.outstanding() as f64 + 1.0)
    }

    fn ejected(&self, now: Instant) -> Option<Instant> {
        let health = self.health();
        health
            .ejected_until
            .filter(|until| *until > now)
            .and(health.ejected_at)
    }

    /// An attempt ended after `latency`, `failed` or not. Returns the ejection's length
    /// when this attempt ejected the endpoint.
    pub fn observe(
        &self,
        latency: Duration,
        failed: bool,
        outlier: &OutlierConfig,
    ) -> Option<Duration> {
        self.observe_at(Instant::now(), latency, failed, outlier)
    }

    fn observe_at(
        &self,
        now: Instant,
        latency: Duration,
        failed: bool,
        outlier: &OutlierConfig,
    ) -> Option<Duration> {
        let mut health = self.health();
        let current = Self::decayed_cost(&health, now);
        // A failure never makes an endpoint look faster: one that fails fast must not
        // draw traffic for it.
        let rtt = if failed {
            (latency.as_nanos() as f64).max(current)
        } else {
            latency.as_nanos() as f64
        };
        let weight =
            (-now.saturating_duration_since(health.stamp).as_secs_f64() / TAU.as_secs_f64()).exp();
        health.cost_ns = if rtt > current {
            rtt
        } else {
            current * weight + rtt * (1.0 - weight)
        };
        health.stamp = now;
        if !failed {
            health.consecutive_failures = 0;
            // Healthy again a while after its last ejection ended: the next ejection
            // starts shorter.
            if let Some(until) = health.ejected_until {
                if health.ejections > 0 && now > until + outlier.base_ejection {
                    health.ejections -= 1;
                    health.ejected_until = Some(now);
                }
            }
            return None;
        }
        health.consecutive_failures += 1;
        let already = health.ejected_until.is_some_and(|until| until > now);
        if outlier.consecutive_failures == 0
            || health.consecutive_failures < outlier.consecutive_failures
            || already
        {
            return None;
        }
        health.ejections += 1;
        health.consecutive_failures = 0;
        let length = outlier
            .base_ejection
            .saturating_mul(health.ejections)
            .min(outlier.max_ejection);
        health.ejected_until = Some(now + length);
        health.ejected_at = Some(now);
        Some(length)
    }
}

/// How one request's endpoint is chosen among the usable ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selection {
    /// The cheaper of two drawn with these rolls (uniform in [0, 1)).
    LeastRequest(f64, f64),
    /// The n-th in turn.
    RoundRobin(usize),
    /// The endpoint whose hash with this key is highest.
    Hash(u64),
}

/// Every endpoint's stats, and the choice among a backend's endpoints.
#[derive(Debug, Default)]
pub struct Balancer {
    outlier: OutlierConfig,
    endpoints: Mutex<HashMap<SocketAddr, Arc<EndpointStats>>>,
}

/// A stable 64-bit hash (FNV-1a), so a key maps to the same endpoint in every waypoint
/// replica and across restarts.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Mixes the bits of `x` (splitmix64's finalizer), for rendezvous scores.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

// === impl Balancer ===

impl Balancer {
    /// A balancer ejecting outliers as `outlier` says.
    pub fn new(outlier: OutlierConfig) -> Self {
        Balancer {
            outlier,
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    /// The waypoint's default ejection settings (a DestinationPolicy may override them).
    pub fn outlier(&self) -> &OutlierConfig {
        &self.outlier
    }

    /// The stats of the endpoint at `addr`, made on first use.
    pub fn stats(&self, addr: SocketAddr) -> Arc<EndpointStats> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        endpoints
            .entry(addr)
            .or_insert_with(|| Arc::new(EndpointStats::new(addr, Instant::now())))
            .clone()
    }

    /// Forgets the endpoints `live` says are gone from the model.
    pub fn retain(&self, live: impl Fn(&SocketAddr) -> bool) {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        endpoints.retain(|addr, _| live(addr));
    }

    /// Endpoints it keeps stats for.
    pub fn len(&self) -> usize {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether it keeps none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index in `candidates` of the endpoint to use: not one of `tried` while another
    /// is left, not ejected (within `outlier`'s share), then as `selection` says.
    pub fn choose(
        &self,
        candidates: &[SocketAddr],
        tried: &[SocketAddr],
        selection: Selection,
        outlier: &OutlierConfig,
    ) -> Option<usize> {
        self.choose_at(Instant::now(), candidates, tried, selection, outlier)
    }

    fn choose_at(
        &self,
        now: Instant,
        candidates: &[SocketAddr],
        tried: &[SocketAddr],
        selection: Selection,
        outlier: &OutlierConfig,
    ) -> Option<usize> {
        if candidates.len() <= 1 {
            return (!candidates.is_empty()).then_some(0);
        }
        let stats: Vec<Arc<EndpointStats>> = candidates.iter().map(|a| self.stats(*a)).collect();
        let mut usable: Vec<usize> = (0..candidates.len())
            .filter(|i| !tried.contains(&candidates[*i]))
            .collect();
        if usable.is_empty() {
            usable = (0..candidates.len()).collect();
        }
        let usable = Self::without_ejected(now, &stats, usable, outlier);
        let pick = |r: f64, n: usize| ((r.clamp(0.0, 1.0) * n as f64) as usize).min(n - 1);
        let roll = match selection {
            Selection::LeastRequest(a, b) => (a, b),
            Selection::RoundRobin(n) => {
                return (!usable.is_empty()).then(|| usable[n % usable.len()]);
            }
            Selection::Hash(key) => {
                return usable.iter().copied().max_by_key(|i| {
                    let addr = candidates[*i].to_string();
                    mix(key ^ stable_hash(&[addr.as_bytes()]))
                });
            }
        };
        match usable.len() {
            0 => None,
            1 => Some(usable[0]),
            n => {
                let a = pick(roll.0, n);
                // The second draw from the others, so the two differ.
                let mut b = pick(roll.1, n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (usable[a], usable[b]);
                Some(if stats[b].load(now) < stats[a].load(now) {
                    b
                } else {
                    a
                })
            }
        }
    }

    /// `usable` without its ejected endpoints, keeping at least one and never sitting out
    /// more than the share of all candidates: the longest-ejected come back first.
    fn without_ejected(
        now: Instant,
        stats: &[Arc<EndpointStats>],
        usable: Vec<usize>,
        outlier: &OutlierConfig,
    ) -> Vec<usize> {
        let mut ejected: Vec<(Instant, usize)> = usable
            .iter()
            .filter_map(|i| stats[*i].ejected(now).map(|at| (at, *i)))
            .collect();
        // maxEjectionPercent 0 turns ejection off, as in Istio.
        if ejected.is_empty() || outlier.max_ejected_share <= 0.0 {
            return usable;
        }
        let share = (stats.len() as f64 * outlier.max_ejected_share).floor() as usize;
        let max_out = share.clamp(1, stats.len() - 1).min(usable.len() - 1);
        // The most recently ejected stay out; the rest come back.
        ejected.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        let out: Vec<usize> = ejected.iter().take(max_out).map(|(_, i)| *i).collect();
        usable.into_iter().filter(|i| !out.contains(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 8080)))
            .collect()
    }

    fn fast_outliers() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejected_share: 0.5,
        }
    }

    /// How often each endpoint is chosen over a grid of rolls.
    fn shares(b: &Balancer, now: Instant, eps: &[SocketAddr]) -> Vec<usize> {
        let mut counts = vec![0; eps.len()];
        for i in 0..20 {
            for j in 0..20 {
                let roll = (f64::from(i) / 20.0, f64::from(j) / 20.0);
                counts[b
                    .choose_at(
                        now,
                        eps,
                        &[],
                        Selection::LeastRequest(roll.0, roll.1),
                        b.outlier(),
                    )
                    .unwrap()] += 1;
            }
        }
        counts
    }

    #[test]
    fn p2c_moves_load_from_a_slow_endpoint_and_forgives_it_later() {
        let b = Balancer::new(OutlierConfig::default());
        let eps = addrs(3);
        let now = Instant::now();
        for (i, ms) in [1, 1, 50].into_iter().enumerate() {
            b.stats(eps[i])
                .observe_at(now, Duration::from_millis(ms), false, b.outlier());
        }
        let counts = shares(&b, now, &eps);
        assert_eq!(
            counts[2], 0,
            "the slow one loses every pair it is in: {counts:?}"
        );
        assert!(counts[0] > 150 && counts[1] > 150, "{counts:?}");
        // Outstanding requests make a fast endpoint costlier.
        let busy: Vec<InFlight> = (0..100).map(|_| b.stats(eps[0]).start()).collect();
        let counts = shares(&b, now, &eps);
        assert!(counts[0] < counts[1] && counts[2] > 0, "{counts:?}");
        drop(busy);
        assert_eq!(b.stats(eps[0]).outstanding(), 0);
        // Unused for a minute, the slow one's estimate has decayed below the others'
        // current ones once they are measured again.
        let later = now + Duration::from_secs(60);
        for ep in &eps[..2] {
            b.stats(*ep)
                .observe_at(later, Duration::from_millis(1), false, b.outlier());
        }
        assert!(shares(&b, later, &eps)[2] > 0);
    }

    #[test]
    fn a_retry_avoids_the_endpoints_already_tried() {
        let b = Balancer::default();
        let eps = addrs(3);
        let o = *b.outlier();
        for i in 0..10 {
            for selection in [
                Selection::LeastRequest(i as f64 / 10.0, 0.5),
                Selection::RoundRobin(i),
                Selection::Hash(i as u64),
            ] {
                assert_eq!(b.choose(&eps, &eps[..2], selection, &o), Some(2));
                assert_ne!(b.choose(&eps, &[eps[0]], selection, &o), Some(0));
            }
        }
        // All tried: any will do.
        let p2c = Selection::LeastRequest(0.3, 0.3);
        assert!(b.choose(&eps, &eps, p2c, &o).is_some());
        assert_eq!(b.choose(&eps[..1], &eps[..1], p2c, &o), Some(0));
        assert_eq!(b.choose(&[], &[], p2c, &o), None);
    }

    #[test]
    fn round_robin_takes_turns_and_a_hash_sticks_to_its_endpoint() {
        let b = Balancer::default();
        let o = *b.outlier();
        let eps = addrs(4);
        let turns: Vec<usize> = (0..8)
            .map(|n| b.choose(&eps, &[], Selection::RoundRobin(n), &o).unwrap())
            .collect();
        assert_eq!(turns, [0, 1, 2, 3, 0, 1, 2, 3]);
        // Each key keeps its endpoint; keys spread over all of them.
        let mut used = std::collections::BTreeSet::new();
        for key in 0..200u64 {
            let k = stable_hash(&[&key.to_be_bytes()]);
            let first = b.choose(&eps, &[], Selection::Hash(k), &o).unwrap();
            assert_eq!(b.choose(&eps, &[], Selection::Hash(k), &o), Some(first));
            used.insert(first);
            // Removing another endpoint does not move this key (rendezvous).
            let other = (first + 1) % eps.len();
            let rest: Vec<SocketAddr> = eps
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != other)
                .map(|(_, a)| *a)
                .collect();
            let moved = b.choose(&rest, &[], Selection::Hash(k), &o).unwrap();
            assert_eq!(rest[moved], eps[first]);
        }
        assert_eq!(used.len(), 4, "{used:?}");
    }

    #[test]
    fn consecutive_failures_eject_for_longer_each_time_and_the_endpoint_returns() {
        let b = Balancer::new(fast_outliers());
        let eps = addrs(3);
        let now = Instant::now();
        for ep in &eps {
            b.stats(*ep)
                .observe_at(now, Duration::from_millis(1), false, b.outlier());
        }
        let bad = b.stats(eps[1]);
        let fail = |at| bad.observe_at(at, Duration::from_millis(1), true, b.outlier());
        assert_eq!((fail(now), fail(now)), (None, None));
        assert_eq!(fail(now), Some(Duration::from_secs(10)));
        assert_eq!(shares(&b, now, &eps)[1], 0, "ejected: no traffic");
        // Back after its time, probed by live traffic.
        let back = now + Duration::from_secs(11);
        assert!(shares(&b, back, &eps)[1] > 0);
        // Failing again: ejected for twice as long, then capped.
        for _ in 0..2 {
            assert_eq!(fail(back), None);
        }
        assert_eq!(fail(back), Some(Duration::from_secs(20)));
        assert_eq!(shares(&b, back + Duration::from_secs(19), &eps)[1], 0);
        let again = back + Duration::from_secs(21);
        for _ in 0..2 {
            fail(again);
        }
        assert_eq!(fail(again), Some(Duration::from_secs(25)), "capped");
        // A success resets the run of failures.
        let good = b.stats(eps[0]);
        for _ in 0..2 {
            good.observe_at(now, Duration::from_millis(1), true, b.outlier());
        }
        good.observe_at(now, Duration::from_millis(1), false, b.outlier());
        assert_eq!(
            good.observe_at(now, Duration::from_millis(1), true, b.outlier()),
            None
        );
    }

    #[test]
    fn never_more_than_the_share_is_ejected_and_never_all() {
        let b = Balancer::new(fast_outliers());
        let eps = addrs(3);
        let now = Instant::now();
        for (k, ep) in eps.iter().enumerate() {
            let at = now + Duration::from_millis(k as u64);
            for _ in 0..3 {
                b.stats(*ep)
                    .observe_at(at, Duration::from_millis(1), true, b.outlier());
            }
        }
        // All three ejected, but 50% of 3 is one: the two ejected first come back.
        let counts = shares(&b, now + Duration::from_millis(5), &eps);
        assert_eq!(counts[2], 0, "{counts:?}");
        assert_eq!(counts[0] + counts[1], 400, "{counts:?}");
        // Two endpoints, one ejected: the share lets one out, the other serves.
        let two = addrs(2);
        let b = Balancer::new(fast_outliers());
        for _ in 0..3 {
            b.stats(two[0])
                .observe_at(now, Duration::from_millis(1), true, b.outlier());
        }
        assert_eq!(shares(&b, now, &two), vec![0, 400]);
        // A share of 0 (maxEjectionPercent: 0) ejects nothing.
        let off = OutlierConfig {
            max_ejected_share: 0.0,
            ..fast_outliers()
        };
        let p2c = Selection::LeastRequest(0.0, 0.0);
        let picked: std::collections::BTreeSet<usize> = (0..2)
            .map(|n| {
                b.choose_at(now, &two, &[], Selection::RoundRobin(n), &off)
                    .unwrap()
            })
            .collect();
        assert_eq!(picked.len(), 2, "both serve with ejection off");
        assert!(b.choose_at(now, &two, &[], p2c, &off).is_some());
    }
}
