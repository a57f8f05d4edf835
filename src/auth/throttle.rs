//! Token buckets by key, bounded in the number of keys they track: what limits the key lookups of
//! a client address that keeps presenting unknown keys.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How many events a bucket allows at once, and how fast it refills.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub burst: f64,
    pub per_second: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, rate: Rate, now: Instant) -> Bucket {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        Bucket {
            tokens: (self.tokens + elapsed * rate.per_second).min(rate.burst),
            at: now,
        }
    }
}

/// One token bucket per key, at most `capacity` keys: when full, the buckets that have refilled
/// completely are dropped (they hold nothing a new bucket would not), and if none has, the
/// oldest half goes.
#[derive(Debug)]
pub struct Buckets<K> {
    rate: Rate,
    capacity: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// Buckets of `rate`, tracking at most `capacity` keys.
    pub fn new(rate: Rate, capacity: usize) -> Buckets<K> {
        Buckets {
            rate,
            capacity,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Bucket>> {
        self.buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes one of `key`'s tokens, or says how long until it has one.
    pub fn try_take(&self, key: &K) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.lock();
        if buckets.len() >= self.capacity && !buckets.contains_key(key) {
            self.make_room(&mut buckets, now);
        }
        let full = Bucket {
            tokens: self.rate.burst,
            at: now,
        };
        let bucket = buckets.entry(key.clone()).or_insert(full);
        let refilled = bucket.refilled(self.rate, now);
        if refilled.tokens < 1.0 {
            *bucket = refilled;
            return Err(self.wait_for_one(refilled));
        }
        *bucket = Bucket {
            tokens: refilled.tokens - 1.0,
            at: now,
        };
        Ok(())
    }

    /// Gives back a token taken for an event that did not count after all.
    pub fn refund(&self, key: &K) {
        let rate = self.rate;
        if let Some(bucket) = self.lock().get_mut(key) {
            bucket.tokens = (bucket.tokens + 1.0).min(rate.burst);
        }
    }

    fn wait_for_one(&self, bucket: Bucket) -> Duration {
        Duration::from_secs_f64(((1.0 - bucket.tokens) / self.rate.per_second).max(0.001))
    }

    fn make_room(&self, buckets: &mut HashMap<K, Bucket>, now: Instant) {
        let rate = self.rate;
        buckets.retain(|_, bucket| bucket.refilled(rate, now).tokens < rate.burst);
        if buckets.len() >= self.capacity {
            let mut ages: Vec<Instant> = buckets.values().map(|bucket| bucket.at).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            buckets.retain(|_, bucket| bucket.at > cutoff);
        }
    }

    /// How many keys are tracked.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }
}

/// The key of a client address: an IPv4 address, or the /64 an IPv6 address belongs to (one
/// host can use a whole /64).
pub fn client_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        burst: 3.0,
        per_second: 1.0,
    };

    #[test]
    fn a_bucket_allows_its_burst_then_asks_to_wait() {
        let buckets = Buckets::new(RATE, 10);
        for _ in 0..3 {
            assert_eq!(buckets.try_take(&1), Ok(()));
        }
        let wait = buckets.try_take(&1).expect_err("the burst is spent");
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        buckets.refund(&1);
        assert_eq!(buckets.try_take(&1), Ok(()), "a refunded token");
        assert_eq!(
            buckets.try_take(&2),
            Ok(()),
            "another key has its own bucket"
        );
    }

    #[test]
    fn the_number_of_tracked_keys_is_bounded() {
        let buckets = Buckets::new(RATE, 100);
        for key in 0..10_000 {
            buckets.try_take(&key).expect("a fresh key has its burst");
        }
        assert!(
            buckets.tracked() <= 100,
            "{} keys tracked",
            buckets.tracked()
        );
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(client_key(one), client_key(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
