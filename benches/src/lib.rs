//! # stsgate-benches
//!
//! Criterion benchmarks of stsgate's hot paths, and the generator of the
//! large rule files they run against.
//!
//! What is measured:
//!
//! - `benches/decide.rs`: [`stsgate_rules::RuleSet::decide`] against a rule
//!   file of 100,000 IP entries (deny) plus 1,000 application entries (allow)
//!   and 1,000 user agent entries (deny), once with `logic = "or"` and once
//!   with `logic = "and"`: a listed and an unlisted IPv4 client, a listed and
//!   an unlisted IPv6 client, and header values that match or do not match.
//!   PRODUCT.md §5 asks for a median under 1 µs on one core.
//! - `benches/compile.rs`: [`stsgate_rules::RuleSet::compile`] of rule files
//!   with 100,000 and 1,000,000 IP entries (what a reload costs; PRODUCT.md §5
//!   asks for a 1,000,000-entry reload under 1 s).
//! - `benches/wstrust.rs`: `stsgate_proxy::wstrust::username` and
//!   `credentials` (the single-pass scan) against the quick-xml reader they
//!   replaced, on the WS-Trust request fixtures; it first prints the heap
//!   allocations per call of each.
//!
//! Run them all with:
//!
//! ```text
//! cargo bench -p stsgate-benches
//! ```
//!
//! Criterion's own options follow `--`, for example
//! `cargo bench -p stsgate-benches -- --warm-up-time 1 --measurement-time 3 decide`.
//! Results (with the median of each case in `new/estimates.json`) land in
//! `target/criterion/`.
//!
//! The rule files are generated in memory by [`generate`] from a fixed seed
//! with a small xorshift generator, so every run and every machine benches
//! the same text. `cargo test -p stsgate-benches` checks that the generated
//! files compile and decide as intended.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use stsgate_rules::Logic;

/// The `X-MS-Client-Application` value an allow list of the generated file
/// holds (so the application section does not block).
pub const APP_LISTED: &str = "Microsoft.Exchange.ActiveSync";
/// An `X-MS-Client-Application` value no entry of the generated file
/// contains (legacy protocols are left out of the allow list).
pub const APP_UNLISTED: &str = "Microsoft.Exchange.Imap";
/// An `X-MS-Client-User-Agent` value the deny list of the generated file
/// matches.
pub const UA_LISTED: &str = "python-requests/2.31.0";
/// An `X-MS-Client-User-Agent` value no deny entry of the generated file
/// is contained in.
pub const UA_UNLISTED: &str = "Apple-iPhone3C1/811.2";
/// A long browser user agent no deny entry is contained in: the worst case
/// for the header automaton, which scans the whole value.
pub const UA_UNLISTED_LONG: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
     (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51";

/// A xorshift64 pseudo-random generator: deterministic, tiny, good enough to
/// scatter test data (not for anything that needs real randomness).
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a seed (0 is replaced, xorshift would stay at 0).
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (`n > 0`; the slight modulo bias does not matter here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Strings in `[request_blocking.ip] entries` (deny). A few of them hold
    /// two comma-separated items, as pasted from a console.
    pub ip_entries: usize,
    /// Strings in `[request_blocking.application] entries` (allow).
    pub applications: usize,
    /// Strings in `[request_blocking.user_agent] entries` (deny).
    pub user_agents: usize,
    /// `logic` of `[request_blocking]`.
    pub logic: Logic,
    /// Seed of the generator: the same spec gives the same text.
    pub seed: u64,
}

impl Spec {
    /// `ip_entries` IP entries, 1,000 application and 1,000 user agent
    /// entries, `logic = "or"`, a fixed seed.
    pub fn new(ip_entries: usize) -> Self {
        Spec {
            ip_entries,
            applications: 1_000,
            user_agents: 1_000,
            logic: Logic::Or,
            seed: 0x0005_EED0_F575_6A7E,
        }
    }

    /// The same spec with another `logic`.
    pub fn logic(mut self, logic: Logic) -> Self {
        self.logic = logic;
        self
    }
}

/// A generated rule file, with addresses known to be listed or unlisted.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The rule file (TOML).
    pub text: String,
    /// IPv4 addresses inside some entry of the IP list (one from about every
    /// hundredth IPv4 entry, at a random place inside it).
    pub listed_v4: Vec<IpAddr>,
    /// IPv6 addresses inside some entry of the IP list.
    pub listed_v6: Vec<IpAddr>,
    /// IPv4 addresses no entry holds (198.18.0.0/15, the benchmarking
    /// network: the generator never writes an entry starting with 198).
    pub unlisted_v4: Vec<IpAddr>,
    /// IPv6 addresses no entry holds (2001:db8::/32: IPv6 entries are all
    /// inside 2a00::/12).
    pub unlisted_v6: Vec<IpAddr>,
}

/// How many known-listed / known-unlisted addresses to keep per family.
const SAMPLES: usize = 1_000;

/// Generates a rule file for `spec`.
///
/// The IP list is a mix close to real deny lists: about 55% single IPv4
/// addresses, 20% `/24`, 4% `/16`, 10% `a-b` ranges inside a `/16`, 5%
/// patterns with trailing `*` octets (`5.143.*.*`, `81.2.69.*`), a handful
/// of patterns with a `*` in the middle (`10.*.0.1` style), 1% two items in
/// one comma-separated string, and 5% IPv6 (addresses, `/32`, `/48`,
/// `/64`). Entries may overlap, as in real lists. The application allow
/// list holds the usual Exchange Online protocols and made-up line-of-business
/// names; the user agent deny list holds known spraying tools and made-up
/// tool names with versions.
pub fn generate(spec: &Spec) -> Generated {
    let mut rng = XorShift::new(spec.seed);
    let mut out = Generated {
        text: String::with_capacity(spec.ip_entries * 24 + 100_000),
        listed_v4: Vec::new(),
        listed_v6: Vec::new(),
        unlisted_v4: Vec::new(),
        unlisted_v6: Vec::new(),
    };
    let logic = match spec.logic {
        Logic::Or => "or",
        Logic::And => "and",
    };
    let t = &mut out.text;
    let _ = writeln!(t, "# Generated by stsgate-benches (seed {:#x}).", spec.seed);
    let _ = writeln!(t, "[request_blocking]");
    let _ = writeln!(t, "enabled = true");
    let _ = writeln!(t, "use_adaptive = false");
    let _ = writeln!(t, "logic = \"{logic}\"");
    let _ = writeln!(t, "mode = \"enforce\"\n");

    let _ = writeln!(t, "[request_blocking.ip]");
    let _ = writeln!(t, "rule = \"deny\"");
    let _ = writeln!(t, "entries = [");
    let sample_every = (spec.ip_entries / SAMPLES).max(1);
    for i in 0..spec.ip_entries {
        let (entry, inside) = if i == 0 {
            // The example of the contract, verbatim.
            let inside = v4([5, 143, rng.below(256) as u8, rng.below(256) as u8]);
            ("5.143.*.*".to_string(), inside)
        } else {
            ip_entry(&mut rng)
        };
        let _ = writeln!(t, "  \"{entry}\",");
        if i % sample_every == 0 || inside.is_ipv6() && out.listed_v6.len() < SAMPLES / 10 {
            match inside {
                IpAddr::V4(_) => out.listed_v4.push(inside),
                IpAddr::V6(_) => out.listed_v6.push(inside),
            }
        }
    }
    let _ = writeln!(t, "]\n");

    let _ = writeln!(t, "[request_blocking.application]");
    let _ = writeln!(t, "rule = \"allow\"");
    let _ = writeln!(t, "entries = [");
    for i in 0..spec.applications {
        let entry = match MODERN_APPS.get(i) {
            Some(app) => (*app).to_string(),
            None => format!(
                "{}.{}{:04}",
                rng.pick(VENDORS),
                rng.pick(PRODUCTS),
                rng.below(10_000)
            ),
        };
        let _ = writeln!(t, "  \"{entry}\",");
    }
    let _ = writeln!(t, "]\n");

    let _ = writeln!(t, "[request_blocking.user_agent]");
    let _ = writeln!(t, "rule = \"deny\"");
    let _ = writeln!(t, "entries = [");
    for i in 0..spec.user_agents {
        let entry = match SPRAY_TOOLS.get(i) {
            Some(tool) => (*tool).to_string(),
            None => format!(
                "{}/{}.{}.{}",
                rng.pick(TOOL_NAMES),
                rng.below(10),
                rng.below(100),
                rng.below(1_000)
            ),
        };
        let _ = writeln!(t, "  \"{entry}\",");
    }
    let _ = writeln!(t, "]");

    for _ in 0..SAMPLES {
        out.unlisted_v4.push(v4([
            198,
            18 + rng.below(2) as u8,
            rng.below(256) as u8,
            rng.below(256) as u8,
        ]));
        let low = u128::from(rng.next_u64()) << 32 | u128::from(rng.next_u64() as u32);
        out.unlisted_v6
            .push(IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | low)));
    }
    out
}

/// Allowed `X-MS-Client-Application` values of Exchange Online (legacy
/// protocols such as IMAP and POP are left out on purpose).
const MODERN_APPS: &[&str] = &[
    "Microsoft.Exchange.ActiveSync",
    "Microsoft.Exchange.Autodiscover",
    "Microsoft.Exchange.WebServices",
    "Microsoft.Exchange.Mapi",
    "Microsoft.Exchange.OfflineAddressBook",
    "Microsoft.Exchange.PowerShell",
];
const VENDORS: &[&str] = &[
    "Contoso",
    "Fabrikam",
    "Northwind",
    "Tailspin",
    "Woodgrove",
    "AdventureWorks",
    "Litware",
    "Proseware",
];
const PRODUCTS: &[&str] = &["Sync", "Mail", "Portal", "Gateway", "Agent", "Connector"];

/// `X-MS-Client-User-Agent` fragments of tools seen in password sprays.
const SPRAY_TOOLS: &[&str] = &["python-requests", "BAV2ROPC", "Go-http-client", "okhttp"];
const TOOL_NAMES: &[&str] = &[
    "o365spray",
    "msolspray",
    "trevorspray",
    "credmaster",
    "spraycannon",
    "rulerclient",
    "mailsniper",
    "hydra-wstrust",
];

fn v4(octets: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(octets))
}

/// A first octet for a generated IPv4 entry: public-looking, never 198
/// (the unlisted addresses live in 198.18.0.0/15).
fn first_octet(rng: &mut XorShift) -> u8 {
    loop {
        let o = rng.between(1, 223) as u8;
        if !matches!(o, 10 | 127 | 198) {
            return o;
        }
    }
}

/// One random IP entry and an address inside it.
fn ip_entry(rng: &mut XorShift) -> (String, IpAddr) {
    let roll = rng.below(10_000);
    let a = first_octet(rng);
    let [b, c, d] = [0; 3].map(|_: u8| rng.below(256) as u8);
    match roll {
        // a single address
        0..5_500 => (format!("{a}.{b}.{c}.{d}"), v4([a, b, c, d])),
        // a /24
        5_500..7_500 => (format!("{a}.{b}.{c}.0/24"), v4([a, b, c, d])),
        // a /16
        7_500..7_900 => (format!("{a}.{b}.0.0/16"), v4([a, b, c, d])),
        // a range inside a /16
        7_900..8_900 => {
            let lo = u16::from_be_bytes([c, d]);
            let hi = lo.saturating_add(rng.between(1, 2_000) as u16);
            let [hc, hd] = hi.to_be_bytes();
            let mid = lo + (hi - lo) / 2;
            let [mc, md] = mid.to_be_bytes();
            (
                format!("{a}.{b}.{c}.{d}-{a}.{b}.{hc}.{hd}"),
                v4([a, b, mc, md]),
            )
        }
        // trailing-star patterns
        8_900..9_200 => (format!("{a}.{b}.*.*"), v4([a, b, c, d])),
        9_200..9_395 => (format!("{a}.{b}.{c}.*"), v4([a, b, c, d])),
        // a star in the middle: rare in real lists
        9_395..9_400 => (format!("{a}.*.{c}.{d}"), v4([a, b, c, d])),
        // two items pasted as one string
        9_400..9_500 => {
            let e = rng.below(256) as u8;
            (
                format!("{a}.{b}.{c}.{d},{a}.{b}.{e}.0/24"),
                v4([a, b, c, d]),
            )
        }
        // IPv6 in 2a00::/12
        _ => {
            let prefix = 0x2a00 + rng.below(16) as u16;
            let net = u128::from(prefix) << 112 | u128::from(rng.next_u64() as u16) << 96;
            let site = u128::from(rng.next_u64() as u16) << 80;
            let subnet = u128::from(rng.next_u64() as u16) << 64;
            let host = u128::from(rng.next_u64());
            let addr = |n: u128| IpAddr::V6(Ipv6Addr::from(n));
            match rng.below(4) {
                0 => {
                    let a = addr(net | site | subnet | host);
                    (a.to_string(), a)
                }
                1 => (
                    format!("{}/32", addr(net)),
                    addr(net | site | subnet | host),
                ),
                2 => (
                    format!("{}/48", addr(net | site)),
                    addr(net | site | subnet | host),
                ),
                _ => (
                    format!("{}/64", addr(net | site | subnet)),
                    addr(net | site | subnet | host),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stsgate_rules::{Action, Facts, NoFeeds, RuleSet, Stage};

    fn facts(ip: IpAddr, app: &'static str, ua: &'static str) -> Facts<'static> {
        Facts {
            application: Some(app),
            user_agent: Some(ua),
            ..Facts::new(ip)
        }
    }

    fn compile(spec: &Spec) -> (Generated, RuleSet) {
        let g = generate(spec);
        let rules = RuleSet::compile("bench.toml", &g.text, &NoFeeds).unwrap_or_else(|e| {
            panic!(
                "generated file does not compile: {:?}",
                &e[..e.len().min(5)]
            )
        });
        (g, rules)
    }

    #[test]
    fn same_seed_same_file() {
        let spec = Spec::new(2_000);
        assert_eq!(generate(&spec).text, generate(&spec).text);
    }

    #[test]
    fn or_file_refuses_listed_and_forwards_unlisted() {
        let (g, rules) = compile(&Spec::new(100_000));
        let ip = rules.blocking.ip.as_ref().expect("ip section");
        assert!(ip.len() >= 100_000, "{} ip entries", ip.len());
        assert_eq!(
            rules.blocking.application.as_ref().map(|l| l.len()),
            Some(1_000)
        );
        assert_eq!(
            rules.blocking.user_agent.as_ref().map(|l| l.len()),
            Some(1_000)
        );
        assert!(g.listed_v4.len() >= 100 && !g.listed_v6.is_empty());

        // Headers that block nothing: only the IP section decides.
        for &addr in g.listed_v4.iter().chain(&g.listed_v6) {
            let d = rules.decide(&facts(addr, APP_LISTED, UA_UNLISTED));
            assert_eq!((d.stage, d.action), (Stage::Ip, Action::Refuse), "{addr}");
            assert!(d.entry.is_some(), "{addr}: no entry named");
        }
        for &addr in g.unlisted_v4.iter().chain(&g.unlisted_v6) {
            let d = rules.decide(&facts(addr, APP_LISTED, UA_UNLISTED));
            assert_eq!(d.action, Action::Forward, "{addr}: {d:?}");
            let d = rules.decide(&facts(addr, APP_LISTED, UA_UNLISTED_LONG));
            assert_eq!(d.action, Action::Forward, "{addr}: {d:?}");
        }

        // Each header section blocks on its own under "or".
        let unlisted = g.unlisted_v4[0];
        let d = rules.decide(&facts(unlisted, APP_UNLISTED, UA_UNLISTED));
        assert_eq!((d.stage, d.action), (Stage::Application, Action::Refuse));
        let d = rules.decide(&facts(unlisted, APP_LISTED, UA_LISTED));
        assert_eq!((d.stage, d.action), (Stage::UserAgent, Action::Refuse));
    }

    #[test]
    fn and_file_refuses_only_when_every_section_blocks() {
        let (g, rules) = compile(&Spec::new(20_000).logic(Logic::And));
        for &addr in g.listed_v4.iter().chain(&g.listed_v6) {
            let d = rules.decide(&facts(addr, APP_UNLISTED, UA_LISTED));
            assert_eq!((d.stage, d.action), (Stage::Ip, Action::Refuse), "{addr}");
            let d = rules.decide(&facts(addr, APP_LISTED, UA_LISTED));
            assert_eq!(d.action, Action::Forward, "{addr}");
        }
        for &addr in g.unlisted_v4.iter().chain(&g.unlisted_v6) {
            let d = rules.decide(&facts(addr, APP_UNLISTED, UA_LISTED));
            assert_eq!(d.action, Action::Forward, "{addr}: {d:?}");
        }
    }
}
