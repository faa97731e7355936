//! Nexmark-like online auction events (the Nexmark benchmark's persons, auctions and bids), as
//! three kinds that fit together: the i-th event of a kind has a fixed position in one Nexmark
//! stream (of every 50 events 1 person, 3 auctions and 46 bids, Nexmark's default mix), its
//! event time comes from that position, and the people and auctions it refers to exist by then.
//! Each event is about 500 bytes: Nexmark's `extra` field pads it.

use std::io::Write;

use weir_crds::DatagenKind;

use super::SplitMix;

/// Events of the Nexmark stream per person, auctions and bids among them.
const PROPORTION: u64 = 50;
const AUCTIONS: u64 = 3;
const BIDS: u64 = 46;
/// Ids start here, as in Nexmark.
pub const FIRST_ID: u64 = 1000;
/// Hot sellers, bidders and auctions are the latest whose index is a multiple of this.
const HOT: u64 = 100;
/// Auctions a bid picks from (the latest ones) when not the hot one.
const IN_FLIGHT_AUCTIONS: u64 = 100;
/// People an auction or bid picks from (the latest ones) when not a hot one.
const ACTIVE_PEOPLE: u64 = 1000;
/// Bytes of an event, `extra` included.
const EVENT_BYTES: usize = 500;
const FIRST_CATEGORY: u64 = 10;
const CATEGORIES: u64 = 5;

/// Position in the Nexmark stream of the `i`-th event of `kind` (a Nexmark kind).
pub fn position(kind: DatagenKind, i: u64) -> u64 {
    match kind {
        DatagenKind::NexmarkPersons => i * PROPORTION,
        DatagenKind::NexmarkAuctions => i / AUCTIONS * PROPORTION + 1 + i % AUCTIONS,
        _ => i / BIDS * PROPORTION + 1 + AUCTIONS + i % BIDS,
    }
}

/// How many persons exist at position `g` (the one at `g` included).
fn persons_at(g: u64) -> u64 {
    g / PROPORTION + 1
}

/// How many auctions exist at position `g` (the one at `g` included).
fn auctions_at(g: u64) -> u64 {
    g / PROPORTION * AUCTIONS + (g % PROPORTION).min(AUCTIONS)
}

impl SplitMix {
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Index `last`'s hot one (`last` rounded down to a multiple of `HOT`, plus `offset` where
    /// that exists) `hot_in` - 1 times out of `hot_in`, else one of the `window` latest.
    fn pick(&mut self, last: u64, hot_in: u64, offset: u64, window: u64) -> u64 {
        if self.below(hot_in) > 0 {
            (last / HOT * HOT + offset).min(last)
        } else {
            last - self.below(window.min(last + 1))
        }
    }

    /// A Nexmark price in cents: 1 to 1,000,000 dollars, log-uniform.
    fn price(&mut self) -> u64 {
        (10f64.powf(self.next_f64() * 6.0) * 100.0).round() as u64
    }
}

const FIRST_NAMES: [&str; 11] =
    ["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter"];
const LAST_NAMES: [&str; 9] = ["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"];
const CITIES: [(&str, &str); 10] = [
    ("Phoenix", "AZ"),
    ("Los Angeles", "CA"),
    ("San Francisco", "CA"),
    ("Boise", "ID"),
    ("Portland", "OR"),
    ("Bend", "OR"),
    ("Redmond", "WA"),
    ("Seattle", "WA"),
    ("Kent", "WA"),
    ("Cheyenne", "WY"),
];
const ITEMS: [&str; 8] = ["lamp", "guitar", "bicycle", "camera", "watch", "teapot", "painting", "chair"];
const CONDITIONS: [&str; 4] = ["vintage", "used", "mint", "restored"];
const CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];

/// Writes the `i`-th event of `kind` at event time `ts` (its position's) into `out`.
pub fn event(kind: DatagenKind, i: u64, mut r: SplitMix, ts: i64, out: &mut Vec<u8>) {
    let g = position(kind, i);
    let start = out.len();
    let _ = match kind {
        DatagenKind::NexmarkPersons => {
            let (first, last) = (FIRST_NAMES[r.below(11) as usize], LAST_NAMES[r.below(9) as usize]);
            let (city, state) = CITIES[r.below(10) as usize];
            let card = r.next_u64() % 10_000_000_000_000_000;
            write!(
                out,
                r#"{{"id":{},"name":"{first} {last}","email":"{}.{}{}@nexmark.example","credit_card":"{:04} {:04} {:04} {:04}","city":"{city}","state":"{state}","ts":{ts}"#,
                FIRST_ID + i,
                first.to_lowercase(),
                last.to_lowercase(),
                i,
                card / 1_000_000_000_000,
                card / 100_000_000 % 10_000,
                card / 10_000 % 10_000,
                card % 10_000,
            )
        }
        DatagenKind::NexmarkAuctions => {
            let seller = r.pick(persons_at(g) - 1, 4, 0, ACTIVE_PEOPLE);
            let (condition, item) = (CONDITIONS[r.below(4) as usize], ITEMS[r.below(8) as usize]);
            let initial_bid = r.price();
            let reserve = initial_bid + r.price();
            let expires = ts + 10_000 + r.below(110_000) as i64;
            let category = FIRST_CATEGORY + r.below(CATEGORIES);
            write!(
                out,
                r#"{{"id":{},"item_name":"{condition} {item}","description":"A {condition} {item}, lot {i}","initial_bid":{initial_bid},"reserve":{reserve},"ts":{ts},"expires":{expires},"seller":{},"category":{category}"#,
                FIRST_ID + i,
                FIRST_ID + seller,
            )
        }
        _ => {
            let auction = r.pick(auctions_at(g) - 1, 2, 0, IN_FLIGHT_AUCTIONS);
            let bidder = r.pick(persons_at(g) - 1, 4, 1, ACTIVE_PEOPLE);
            let price = r.price();
            let channel = CHANNELS[r.below(4) as usize];
            write!(
                out,
                r#"{{"auction":{},"bidder":{},"price":{price},"channel":"{channel}","url":"https://www.nexmark.example/{}/item.htm?query=1&channel_id={}","ts":{ts}"#,
                FIRST_ID + auction,
                FIRST_ID + bidder,
                channel.to_lowercase(),
                r.below(1 << 20),
            )
        }
    };
    // Nexmark's `extra`: random letters up to the event size.
    out.extend_from_slice(br#","extra":""#);
    let pad = EVENT_BYTES.saturating_sub(out.len() - start + 2);
    let mut letters = 0u64;
    for k in 0..pad {
        if k % 8 == 0 {
            letters = r.next_u64();
        }
        out.push(b'a' + (letters % 26) as u8);
        letters /= 26;
    }
    out.extend_from_slice(br#""}"#);
}

/// Event time shift of the `i`-th event of `kind`: bids are 10 % out of order by up to 2 s;
/// persons and auctions come in order (so a seller never appears after its auction).
pub fn disorder(kind: DatagenKind, r: &mut SplitMix) -> i64 {
    if kind == DatagenKind::NexmarkBids && r.next_f64() < 0.10 {
        -(r.below(2_000) as i64)
    } else {
        0
    }
}
