//! Generated events for demos and benchmarks, deterministic per (seed, sequence number) so a
//! restored task regenerates exactly what it would have read, rate-limited: card payments
//! (about 500 bytes each, skewed card keys, some out-of-order events and a few late ones), shop
//! orders, the payments of those orders (to join with them), merchants (a side input), and
//! Nexmark's persons, auctions and bids (`nexmark`).

mod nexmark;

use std::io::Write;
use std::time::{Duration, Instant};

use weir_crds::{DatagenKind, DatagenSpec};

use super::{Polled, Records, Result, Source};

/// Event-time spacing when no rate is set: 10,000 events per second of event time.
const DEFAULT_EVENT_RATE: u64 = 10_000;

pub struct DatagenSource {
    spec: DatagenSpec,
    next: u64,
    start_time: i64,
    started: Instant,
    emitted_since_start: u64,
    buf: Vec<u8>,
}

impl DatagenSource {
    pub fn new(spec: DatagenSpec) -> DatagenSource {
        let start_time = spec.start_time.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
        DatagenSource {
            spec,
            next: 0,
            start_time,
            started: Instant::now(),
            emitted_since_start: 0,
            buf: Vec::with_capacity(600),
        }
    }

    /// The random stream of event `i` (of `salt`, so kinds of one seed differ).
    fn rng(&self, i: u64, salt: u64) -> SplitMix {
        SplitMix(self.spec.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ salt)
    }

    /// Event time of the `i`-th event at the spec's event rate.
    fn base_time(&self, i: u64) -> i64 {
        let rate = self.spec.event_rate.or(self.spec.rate).unwrap_or(DEFAULT_EVENT_RATE).max(1);
        self.start_time + (i as u128 * 1000 / rate as u128) as i64
    }

    /// How many events the source has; unbounded when `None`.
    fn limit(&self) -> Option<u64> {
        match self.spec.kind {
            DatagenKind::Merchants => Some(self.spec.count.unwrap_or(self.keys())),
            _ => self.spec.count,
        }
    }

    fn keys(&self) -> u64 {
        self.spec.keys.unwrap_or(10_000).max(1)
    }

    /// Writes event `i` as JSON into `out`; `false` when position `i` has no event (an order
    /// that is never paid).
    pub fn event(&self, i: u64, out: &mut Vec<u8>) -> bool {
        match self.spec.kind {
            DatagenKind::Payments => self.payment(i, out),
            DatagenKind::Orders => {
                let (ts, customer, merchant, total) = self.order(i);
                let _ = write!(
                    out,
                    r#"{{"order_id":"o-{i:010}","customer_id":"cust-{customer:06}","merchant_id":"m-{merchant:05}","total":{total},"ts":{ts}}}"#
                );
            }
            DatagenKind::OrderPayments => {
                if i % 25 == 7 {
                    return false;
                }
                let (ts, _, _, total) = self.order(i);
                let mut r = self.rng(i, 0x0DE2_9A7E);
                let ts = ts + 1_000 + (r.next_u64() % 59_000) as i64;
                const METHODS: [&str; 4] = ["card", "paypal", "transfer", "wallet"];
                let method = METHODS[(r.next_u64() % 4) as usize];
                let _ = write!(
                    out,
                    r#"{{"payment_id":"pay-{i:010}","order_id":"o-{i:010}","amount":{total},"method":"{method}","ts":{ts}}}"#
                );
            }
            kind @ (DatagenKind::NexmarkPersons | DatagenKind::NexmarkAuctions | DatagenKind::NexmarkBids) => {
                let mut r = self.rng(i, 0x4E58_0000 + kind as u64);
                let ts = self.base_time(nexmark::position(kind, i)) + nexmark::disorder(kind, &mut r);
                nexmark::event(kind, i, r, ts, out);
            }
            DatagenKind::Merchants => {
                let mut r = self.rng(i, 0x3E2C_4A17);
                const CATEGORIES: [&str; 6] = ["grocery", "travel", "electronics", "fashion", "gaming", "fuel"];
                const COUNTRIES: [&str; 6] = ["DE", "US", "GB", "FR", "JP", "NL"];
                let (c, k) = (CATEGORIES[(r.next_u64() % 6) as usize], COUNTRIES[(r.next_u64() % 6) as usize]);
                let _ = write!(
                    out,
                    r#"{{"merchant_id":"m-{i:05}","name":"Merchant {i}","category":"{c}","country":"{k}","ts":{}}}"#,
                    self.start_time
                );
            }
        }
        true
    }

    /// Order `i`: event time (5 % out of order by up to 3 s), customer, merchant, total.
    fn order(&self, i: u64) -> (i64, u64, u64, f64) {
        let mut r = self.rng(i, 0x04DE_2500);
        let mut ts = self.base_time(i);
        if r.next_f64() < 0.05 {
            ts -= (r.next_u64() % 3_000) as i64;
        }
        let customer = (self.keys() as f64 * r.next_f64().powi(2)) as u64;
        let merchant = (2_000.0 * r.next_f64().powi(2)) as u64;
        let normal = (r.next_f64() + r.next_f64() + r.next_f64() - 1.5) * 2.0;
        let total = ((3.8 + 0.9 * normal).exp() * 100.0).round() / 100.0;
        (ts, customer, merchant, total)
    }

    fn payment(&self, i: u64, out: &mut Vec<u8>) {
        let mut r = self.rng(i, 0);
        let keys = self.keys();
        let mut ts = self.base_time(i);
        let disorder = r.next_f64();
        if disorder < 0.005 {
            ts -= 60_000 + (r.next_u64() % 540_000) as i64; // late by 1-10 minutes
        } else if disorder < 0.10 {
            ts -= (r.next_u64() % 5_000) as i64; // out of order by up to 5 s
        }
        // Skewed keys: a few cards are very busy, most are quiet.
        let card = (keys as f64 * r.next_f64().powi(3)) as u64;
        let merchant = (2_000.0 * r.next_f64().powi(2)) as u64;
        let amount = if r.next_f64() < 0.01 {
            0.5 + (r.next_u64() % 150) as f64 / 100.0
        } else {
            let normal = (r.next_f64() + r.next_f64() + r.next_f64() - 1.5) * 2.0;
            ((3.5 + 1.2 * normal).exp() * 100.0).round() / 100.0
        };
        const CURRENCIES: [&str; 4] = ["EUR", "USD", "GBP", "JPY"];
        const COUNTRIES: [&str; 6] = ["DE", "US", "GB", "FR", "JP", "NL"];
        const CHANNELS: [&str; 3] = ["web", "pos", "app"];
        let pick = |r: &mut SplitMix, n: usize| (r.next_u64() % n as u64) as usize;
        let (cur, country, channel) = (pick(&mut r, 4), pick(&mut r, 6), pick(&mut r, 3));
        let status = if r.next_f64() < 0.03 { "declined" } else { "approved" };
        let (a, b) = (r.next_u64(), r.next_u64());
        let _ = write!(
            out,
            r#"{{"id":"{:08x}-{:04x}-{:04x}-{:04x}-{:012x}","card_id":"card-{card:06}","merchant_id":"m-{merchant:05}","amount":{amount},"currency":"{}","country":"{}","channel":"{}","device_id":"dev-{:08x}","ip":"10.{}.{}.{}","status":"{status}","ts":{ts},"user_agent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36","session_ref":"{:016x}{:016x}","risk_flags":["velocity_ok","geo_ok","device_known"],"schema_version":3}}"#,
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff,
            CURRENCIES[cur],
            COUNTRIES[country],
            CHANNELS[channel],
            card * 7919 % 0xffff_ffff,
            card % 256,
            merchant % 256,
            i % 256,
            a,
            b,
        );
    }
}

impl Source for DatagenSource {
    fn partitions(&self) -> Vec<u32> {
        vec![0]
    }

    fn seek(&mut self, _partition: u32, position: i64) -> Result<()> {
        self.next = position.max(0) as u64;
        Ok(())
    }

    fn poll(&mut self, max: usize, wait: Duration) -> Result<Polled> {
        let mut n = max as u64;
        if let Some(count) = self.limit() {
            n = n.min(count.saturating_sub(self.next));
        }
        if let Some(rate) = self.spec.rate {
            let allowed = (self.started.elapsed().as_secs_f64() * rate as f64) as u64;
            let budget = allowed.saturating_sub(self.emitted_since_start);
            if budget == 0 {
                std::thread::sleep(wait.min(Duration::from_secs_f64(1.0 / rate as f64)));
                return Ok(Polled::default());
            }
            n = n.min(budget);
        }
        let now = chrono::Utc::now().timestamp_millis();
        let mut recs = Records::default();
        recs.data.reserve(n as usize * 560);
        for _ in 0..n {
            self.buf.clear();
            let mut buf = std::mem::take(&mut self.buf);
            if self.event(self.next, &mut buf) {
                recs.push(&buf, self.next as i64, now);
            }
            self.buf = buf;
            self.next += 1;
        }
        self.emitted_since_start += n;
        Ok(Polled { batches: if recs.is_empty() { vec![] } else { vec![(0, recs)] } })
    }

    fn finished(&self) -> bool {
        self.limit().is_some_and(|c| self.next >= c)
    }
}

/// SplitMix64: small, fast and good enough for synthetic data.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_crds::DatagenKind;

    fn spec() -> DatagenSpec {
        DatagenSpec {
            kind: DatagenKind::Payments,
            rate: None,
            event_rate: None,
            seed: 7,
            count: Some(5_000),
            keys: Some(1_000),
            start_time: Some(1_700_000_000_000),
        }
    }

    #[test]
    fn deterministic_valid_and_about_500_bytes() {
        let g = DatagenSource::new(spec());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        g.event(42, &mut a);
        g.event(42, &mut b);
        assert_eq!(a, b);
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        for f in weir_crds::datagen_schema(DatagenKind::Payments).keys() {
            assert!(v.get(f).is_some(), "field {f} missing in {v}");
        }
        assert!((450..=600).contains(&a.len()), "{} bytes", a.len());
    }

    #[test]
    fn bounded_count_with_disorder_and_skew() {
        let mut g = DatagenSource::new(spec());
        let mut all = Vec::new();
        while !g.finished() {
            for (_, r) in g.poll(1_000, Duration::ZERO).unwrap().batches {
                for i in 0..r.len() {
                    all.push(serde_json::from_slice::<serde_json::Value>(r.payload(i)).unwrap());
                }
            }
        }
        assert_eq!(all.len(), 5_000);
        let ts: Vec<i64> = all.iter().map(|v| v["ts"].as_i64().unwrap()).collect();
        let out_of_order = ts.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(out_of_order > 100, "some events are out of order: {out_of_order}");
        let hot = all.iter().filter(|v| v["card_id"] == "card-000000").count();
        assert!(hot > 50, "the hottest card is busy: {hot}");
    }

    fn all(kind: DatagenKind, count: Option<u64>) -> Vec<serde_json::Value> {
        let mut g = DatagenSource::new(DatagenSpec { kind, count, keys: Some(50), ..spec() });
        let mut all = Vec::new();
        while !g.finished() {
            for (_, r) in g.poll(1_000, Duration::ZERO).unwrap().batches {
                for i in 0..r.len() {
                    all.push(serde_json::from_slice::<serde_json::Value>(r.payload(i)).unwrap());
                }
            }
        }
        all
    }

    #[test]
    fn orders_their_payments_and_merchants_fit_together() {
        let orders = all(DatagenKind::Orders, Some(1_000));
        let payments = all(DatagenKind::OrderPayments, Some(1_000));
        let merchants = all(DatagenKind::Merchants, None);
        assert_eq!((orders.len(), payments.len(), merchants.len()), (1_000, 960, 50), "one order in 25 unpaid");
        for (kind, rows) in [
            (DatagenKind::Orders, &orders),
            (DatagenKind::OrderPayments, &payments),
            (DatagenKind::Merchants, &merchants),
        ] {
            for f in weir_crds::datagen_schema(kind).keys() {
                assert!(rows.iter().all(|v| v.get(f).is_some()), "{kind:?} has {f}");
            }
        }
        let by_id: std::collections::BTreeMap<&str, &serde_json::Value> =
            orders.iter().map(|o| (o["order_id"].as_str().unwrap(), o)).collect();
        for p in &payments {
            let o = by_id[p["order_id"].as_str().unwrap()];
            let delay = p["ts"].as_i64().unwrap() - o["ts"].as_i64().unwrap();
            assert!((1_000..60_000).contains(&delay), "paid 1-60 s after the order: {delay}");
            assert_eq!(p["amount"], o["total"]);
        }
        assert!(orders.iter().all(|o| o["merchant_id"].as_str().unwrap() < "m-02000"));
    }

    #[test]
    fn nexmark_persons_auctions_and_bids_fit_together() {
        let rows = |kind, count| {
            let spec = DatagenSpec { kind, count: Some(count), event_rate: Some(1_000), ..spec() };
            let mut g = DatagenSource::new(spec);
            let mut all = Vec::new();
            while !g.finished() {
                for (_, r) in g.poll(1_000, Duration::ZERO).unwrap().batches {
                    for i in 0..r.len() {
                        assert!((490..=510).contains(&r.payload(i).len()), "{} bytes", r.payload(i).len());
                        all.push(serde_json::from_slice::<serde_json::Value>(r.payload(i)).unwrap());
                    }
                }
            }
            for f in weir_crds::datagen_schema(kind).keys() {
                assert!(all.iter().all(|v| v.get(f).is_some()), "{kind:?} has {f}");
            }
            all
        };
        // 10,000 events of the Nexmark stream: 200 persons, 600 auctions, 9,200 bids.
        let persons = rows(DatagenKind::NexmarkPersons, 200);
        let auctions = rows(DatagenKind::NexmarkAuctions, 600);
        let bids = rows(DatagenKind::NexmarkBids, 9_200);
        let ts = |v: &serde_json::Value| v["ts"].as_i64().unwrap();
        let by_id = |rows: &[serde_json::Value]| -> std::collections::BTreeMap<i64, i64> {
            rows.iter().map(|v| (v["id"].as_i64().unwrap(), ts(v))).collect()
        };
        let (person_ts, auction_ts) = (by_id(&persons), by_id(&auctions));
        assert_eq!(person_ts.keys().next(), Some(&1000));
        assert!(persons.windows(2).chain(auctions.windows(2)).all(|w| ts(&w[0]) <= ts(&w[1])), "in order");
        assert_eq!(ts(&bids[9_199]) / 1000 - ts(&persons[0]) / 1000, 9, "10 s of event time in all");
        for a in &auctions {
            let seller = person_ts[&a["seller"].as_i64().unwrap()];
            assert!(seller <= ts(a), "the seller exists before the auction");
            assert!((10..=14).contains(&a["category"].as_i64().unwrap()));
            assert!(a["expires"].as_i64().unwrap() > ts(a));
        }
        let mut hot = std::collections::BTreeMap::<i64, usize>::new();
        for b in &bids {
            let auction = b["auction"].as_i64().unwrap();
            *hot.entry(auction).or_default() += 1;
            assert!(auction_ts[&auction] <= ts(b) + 2_000, "the auction exists (up to 2 s of disorder)");
            assert!(person_ts[&b["bidder"].as_i64().unwrap()] <= ts(b) + 2_000);
        }
        let busiest = hot.values().max().copied().unwrap_or(0);
        assert!(busiest > 500, "half the bids go to a few hot auctions: {busiest}");
        let out_of_order = bids.windows(2).filter(|w| ts(&w[1]) < ts(&w[0])).count();
        assert!(out_of_order > 300, "some bids are out of order: {out_of_order}");
    }
}
