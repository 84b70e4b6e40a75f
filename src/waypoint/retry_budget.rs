//! The retry budget: what stops retries from turning a small outage into a storm.
//!
//! Each backend Service has one [`RetryBudget`]. Every request sent to it deposits; every
//! retry withdraws. Over a sliding window (10 s) retries may add at most `ratio` (20%) of
//! the window's requests, plus a floor of `min_per_second` retries per second so a quiet
//! Service can still retry. When the budget is spent, a request that would have been
//! retried fails at once with response flag `RBX`, and
//! `weft_waypoint_retry_budget_exhausted_total` counts it; the budget left is the gauge
//! `weft_waypoint_retry_budget_remaining`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::model::traffic_policies::DestinationPolicy;

/// Counter: retries sent, by destination service and reason.
pub const RETRIES_TOTAL: &str = "weft_waypoint_retries_total";
/// Counter: retries refused because the destination's budget was spent.
pub const BUDGET_EXHAUSTED_TOTAL: &str = "weft_waypoint_retry_budget_exhausted_total";
/// Gauge: retries the destination's budget still allows in the current window.
pub const BUDGET_REMAINING: &str = "weft_waypoint_retry_budget_remaining";

/// How many one-second buckets the window holds.
const WINDOW_SECONDS: usize = 10;

/// How much extra load retries may add.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetLimits {
    /// Retries allowed per request in the window (0.2: 20% extra load).
    pub ratio: f64,
    /// Retries allowed per second whatever the traffic.
    pub min_per_second: u32,
}

impl Default for BudgetLimits {
    fn default() -> Self {
        BudgetLimits {
            ratio: 0.2,
            min_per_second: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which second since the budget's start this bucket counts.
    second: u64,
    requests: u64,
    retries: u64,
}

/// One backend Service's retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    limits: Mutex<BudgetLimits>,
    started: Instant,
    buckets: Mutex<[Bucket; WINDOW_SECONDS]>,
    remaining: metrics::Gauge,
    exhausted: metrics::Counter,
}

// === impl RetryBudget ===

impl RetryBudget {
    /// A budget for `service` (`namespace/name`, the metrics' label).
    pub fn new(service: &str, limits: BudgetLimits) -> Self {
        let labels = [("destination_service", service.to_owned())];
        RetryBudget {
            limits: Mutex::new(limits),
            started: Instant::now(),
            buckets: Mutex::new([Bucket::default(); WINDOW_SECONDS]),
            remaining: metrics::gauge!(BUDGET_REMAINING, &labels),
            exhausted: metrics::counter!(BUDGET_EXHAUSTED_TOTAL, &labels),
        }
    }

    /// A request was sent to the Service (its first attempt).
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Whether one retry may be sent now; if so it is counted.
    pub fn withdraw(&self) -> bool {
        self.withdraw_at(Instant::now())
    }

    /// Retries still allowed in the current window.
    pub fn remaining(&self) -> u64 {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        self.remaining_in(&mut buckets, self.second(Instant::now()))
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs()
    }

    /// The bucket for `second`, emptied first if it held an older second.
    fn bucket(buckets: &mut [Bucket; WINDOW_SECONDS], second: u64) -> &mut Bucket {
        let bucket = &mut buckets[(second % WINDOW_SECONDS as u64) as usize];
        if bucket.second != second {
            *bucket = Bucket {
                second,
                ..Bucket::default()
            };
        }
        bucket
    }

    fn remaining_in(&self, buckets: &mut [Bucket; WINDOW_SECONDS], now: u64) -> u64 {
        let oldest = now.saturating_sub(WINDOW_SECONDS as u64 - 1);
        let (requests, retries) = buckets
            .iter()
            .filter(|b| b.second >= oldest && b.second <= now)
            .fold((0, 0), |(q, r), b| (q + b.requests, r + b.retries));
        // The floor covers the seconds the window has existed, so a budget just made does
        // not start with ten seconds' worth.
        let seconds = (now + 1).min(WINDOW_SECONDS as u64);
        let limits = *self.limits.lock().unwrap_or_else(|e| e.into_inner());
        let allowed =
            (requests as f64 * limits.ratio) as u64 + u64::from(limits.min_per_second) * seconds;
        allowed.saturating_sub(retries)
    }

    fn deposit_at(&self, now: Instant) {
        let second = self.second(now);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        Self::bucket(&mut buckets, second).requests += 1;
        let remaining = self.remaining_in(&mut buckets, second);
        drop(buckets);
        self.remaining.set(remaining as f64);
    }

    fn withdraw_at(&self, now: Instant) -> bool {
        let second = self.second(now);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let remaining = self.remaining_in(&mut buckets, second);
        let allowed = remaining > 0;
        if allowed {
            Self::bucket(&mut buckets, second).retries += 1;
        }
        drop(buckets);
        self.remaining.set(remaining.saturating_sub(1) as f64);
        if !allowed {
            self.exhausted.increment(1);
        }
        allowed
    }
}

/// The budgets of every backend Service, made on first use.
#[derive(Debug, Default)]
pub struct RetryBudgets {
    limits: BudgetLimits,
    budgets: Mutex<HashMap<String, Arc<RetryBudget>>>,
}

// === impl RetryBudgets ===

impl RetryBudgets {
    /// Budgets with `limits` each.
    pub fn new(limits: BudgetLimits) -> Self {
        RetryBudgets {
            limits,
            budgets: Mutex::new(HashMap::new()),
        }
    }

    /// The budget of Service `namespace/name`, with the limits of its DestinationPolicy's
    /// `retryBudget` where it sets them.
    pub fn of(&self, service: &str, policy: Option<&DestinationPolicy>) -> Arc<RetryBudget> {
        let mut limits = self.limits;
        if let Some(percent) = policy.and_then(|p| p.retry_budget_percent) {
            limits.ratio = percent / 100.0;
        }
        if let Some(floor) = policy.and_then(|p| p.min_retries_per_second) {
            limits.min_per_second = floor;
        }
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(budget) = budgets.get(service) {
            *budget.limits.lock().unwrap_or_else(|e| e.into_inner()) = limits;
            return budget.clone();
        }
        let budget = Arc::new(RetryBudget::new(service, limits));
        budgets.insert(service.to_owned(), budget.clone());
        budget
    }
}

/// How long the budget's window is.
pub const WINDOW: Duration = Duration::from_secs(WINDOW_SECONDS as u64);

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(
            "test/svc",
            BudgetLimits {
                ratio,
                min_per_second,
            },
        )
    }

    #[test]
    fn retries_are_capped_at_the_ratio_plus_the_floor() {
        let budget = budget(0.2, 0);
        let now = budget.started;
        for _ in 0..100 {
            budget.deposit_at(now);
        }
        let granted = (0..100).filter(|_| budget.withdraw_at(now)).count();
        assert_eq!(granted, 20, "20% of 100 requests");
        let floored = self::budget(0.2, 3);
        let granted = (0..100).filter(|_| floored.withdraw_at(now)).count();
        assert_eq!(granted, 3, "no traffic: the floor of one second");
    }

    #[test]
    fn the_window_slides_and_old_requests_stop_counting() {
        let budget = budget(0.5, 0);
        let start = budget.started;
        for _ in 0..10 {
            budget.deposit_at(start);
        }
        assert_eq!((0..10).filter(|_| budget.withdraw_at(start)).count(), 5);
        // Nine seconds later the same requests still count, and the budget is spent.
        let later = start + Duration::from_secs(9);
        assert!(!budget.withdraw_at(later));
        // Ten seconds later they have left the window: nothing to spend.
        let gone = start + WINDOW;
        budget.deposit_at(gone);
        budget.deposit_at(gone);
        assert_eq!((0..10).filter(|_| budget.withdraw_at(gone)).count(), 1);
    }

    #[test]
    fn budgets_are_per_service() {
        let budgets = RetryBudgets::new(BudgetLimits {
            ratio: 0.0,
            min_per_second: 1,
        });
        assert!(budgets.of("a/x", None).withdraw());
        assert!(!budgets.of("a/x", None).withdraw());
        assert!(budgets.of("a/y", None).withdraw());
    }
}
