//! Prometheus metrics (PRODUCT.md §4.6). Label sets are typed: a stage,
//! an action, a result, a response class. Never an IP, a user or a header.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};
use std::sync::{Arc, OnceLock};

use stsgate_rules::{Action, Stage};

/// Outcome class of an upstream exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamClass {
    /// 2xx … 5xx answers.
    Status(u16),
    /// Could not connect, reset, bad answer.
    Error,
    /// No answer within `upstream.timeout`.
    Timeout,
}

impl UpstreamClass {
    /// Every `class` label, by index.
    const LABELS: [&'static str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error", "timeout"];

    fn index(self) -> usize {
        match self {
            UpstreamClass::Status(100..=199) => 0,
            UpstreamClass::Status(200..=299) => 1,
            UpstreamClass::Status(300..=399) => 2,
            UpstreamClass::Status(400..=499) => 3,
            UpstreamClass::Status(_) => 4,
            UpstreamClass::Error => 5,
            UpstreamClass::Timeout => 6,
        }
    }
}

/// The series of a counter family, looked up by index instead of by label
/// hash on the request path; a series appears on first use.
#[derive(Clone)]
struct Cells {
    family: IntCounterVec,
    cells: Arc<[OnceLock<IntCounter>]>,
}

impl Cells {
    fn new(family: IntCounterVec, len: usize) -> Cells {
        Cells {
            family,
            cells: (0..len).map(|_| OnceLock::new()).collect(),
        }
    }

    fn get(&self, index: usize, labels: impl FnOnce() -> [&'static str; 2]) -> &IntCounter {
        self.cells[index].get_or_init(|| {
            let labels = labels();
            let n = if labels[1].is_empty() { 1 } else { 2 };
            self.family.with_label_values(&labels[..n])
        })
    }
}

/// Every metric of the gate, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    decisions: Cells,
    reloads: IntCounterVec,
    upstream_responses: Cells,
    request_duration: Histogram,
    upstream_duration: Histogram,
    /// `stsgate_signins_total{result}`: what the STS answered.
    pub signins: IntCounterVec,
    /// `stsgate_rejected_requests_total{reason}`: filtered requests the gate
    /// could not read (400, 408, 413).
    pub rejected: IntCounterVec,
    /// Decision log events dropped because the writer fell behind.
    pub log_dropped: IntCounter,
    /// Forwarded-IP headers that did not parse.
    pub bad_forwarded_headers: IntCounter,
    /// Threat feeds that could not be read (their last good contents kept).
    pub feed_failures: IntCounter,
    /// `stsgate_feed_reloads_total{feed, result}`: see [`Metrics::feed_reload`].
    feed_reloads: IntCounterVec,
    /// 1 while the rule file on disk compiles (the last load or reload
    /// succeeded), 0 while the last attempt failed: an alert on it keeps
    /// firing until the file is fixed, unlike the failure counter.
    pub rules_file_ok: prometheus::IntGauge,
    /// Trusted proxy lists or configs that failed to reload (last good kept).
    pub trusted_list_failures: IntCounter,
    /// Each upstream server: 1 healthy, 0 ejected (`server` = configured URL).
    pub upstream_healthy: prometheus::IntGaugeVec,
    /// `stsgate_tls_reloads_total{result}`: listener pairs and upstream CA
    /// files reloaded (`crate::tls`), `success` | `failure` (old one kept).
    pub tls_reloads: IntCounterVec,
    /// `stsgate_protocol_requests_total{protocol, action}`: decided requests
    /// by sign-in protocol (`wstrust`, `oauth2_ropc`, `forms`) and action.
    pub protocol_requests: IntCounterVec,
    /// `stsgate_protocol_signins_total{protocol, result}`: what the STS
    /// answered, by sign-in protocol.
    pub protocol_signins: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let m = Metrics {
            decisions: Cells::new(
                counter_vec(
                    "stsgate_decisions_total",
                    "Requests decided, by the stage that decided and the action taken.",
                    &["stage", "action"],
                ),
                Stage::ALL.len() * Action::ALL.len(),
            ),
            reloads: counter_vec(
                "stsgate_rule_reloads_total",
                "Rule file reloads, by result.",
                &["result"],
            ),
            upstream_responses: Cells::new(
                counter_vec(
                    "stsgate_upstream_responses_total",
                    "Upstream exchanges, by answer class.",
                    &["class"],
                ),
                UpstreamClass::LABELS.len(),
            ),
            request_duration: histogram(
                "stsgate_request_duration_seconds",
                "Time from request headers to response headers, as the client sees it.",
            ),
            upstream_duration: histogram(
                "stsgate_upstream_duration_seconds",
                "Time the upstream took to answer with headers.",
            ),
            signins: counter_vec(
                "stsgate_signins_total",
                "Forwarded sign-ins by what the STS answered: success, failure, unknown.",
                &["result"],
            ),
            rejected: counter_vec(
                "stsgate_rejected_requests_total",
                "Requests answered 400, 408, 413 (filtered paths) or 431 (HTTP/2) before any decision, by reason.",
                &["reason"],
            ),
            log_dropped: counter(
                "stsgate_decision_log_dropped_total",
                "Decision log events dropped because the writer fell behind.",
            ),
            bad_forwarded_headers: counter(
                "stsgate_forwarded_header_errors_total",
                "Forwarded-IP headers from trusted proxies that did not parse.",
            ),
            feed_failures: counter(
                "stsgate_feed_failures_total",
                "Threat feed reads that failed; the feed's last good contents were kept.",
            ),
            feed_reloads: counter_vec(
                "stsgate_feed_reloads_total",
                "Threat feed loads by feed name and result: success (a new list), not_modified (304, or the same contents), failure (the last good list kept).",
                &["feed", "result"],
            ),
            rules_file_ok: {
                let g = prometheus::IntGauge::new(
                    "stsgate_rules_file_ok",
                    "1 while the rule file on disk compiles; 0 while its last (re)load failed (the rules in force are older).",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g.set(1);
                g
            },
            trusted_list_failures: counter(
                "stsgate_trusted_list_failures_total",
                "Trusted proxy lists (or the config) that failed to reload; the last good set was kept.",
            ),
            upstream_healthy: {
                let g = prometheus::IntGaugeVec::new(
                    Opts::new(
                        "stsgate_upstream_healthy",
                        "Upstream servers: 1 healthy, 0 ejected after failures.",
                    ),
                    &["server"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            tls_reloads: counter_vec(
                "stsgate_tls_reloads_total",
                "Reloads of the listener's certificate and key and of upstream.ca_file, by result (on failure the one in force is kept).",
                &["result"],
            ),
            protocol_requests: counter_vec(
                "stsgate_protocol_requests_total",
                "Decided requests by sign-in protocol (wstrust, oauth2_ropc, forms) and the action taken.",
                &["protocol", "action"],
            ),
            protocol_signins: counter_vec(
                "stsgate_protocol_signins_total",
                "Forwarded sign-ins by protocol and what the STS answered: success, failure, unknown.",
                &["protocol", "result"],
            ),
            registry,
        };
        let build_info = prometheus::IntGaugeVec::new(
            Opts::new(
                "stsgate_build_info",
                "Always 1; the version that is running.",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m.registry
            .register(Box::new(build_info))
            .expect("unique metric");
        // Series that exist from the start, so rates and alerts see zero.
        for result in ["success", "failure"] {
            m.reloads.with_label_values(&[result]).reset();
            m.tls_reloads.with_label_values(&[result]).reset();
        }
        for result in ["success", "failure", "unknown"] {
            m.signins.with_label_values(&[result]).reset();
            for protocol in crate::signin::Protocol::ALL {
                m.protocol_signins
                    .with_label_values(&[protocol.as_str(), result])
                    .reset();
            }
        }
        for protocol in crate::signin::Protocol::ALL {
            for action in [Action::Forward, Action::Refuse] {
                m.protocol_requests
                    .with_label_values(&[protocol.as_str(), action.as_str()])
                    .reset();
            }
        }
        for reason in [
            "bad_request",
            "body_timeout",
            "body_too_large",
            "header_too_large",
            "bad_form",
        ] {
            m.rejected.with_label_values(&[reason]).reset();
        }
        for class in 1..UpstreamClass::LABELS.len() {
            m.upstream_responses
                .get(class, || [UpstreamClass::LABELS[class], ""])
                .reset();
        }
        for (stage, action) in [
            (Stage::None, Action::Forward),
            (Stage::Path, Action::Forward),
            (Stage::Path, Action::Refuse),
        ] {
            m.decision_cell(stage, action).reset();
        }
        m
    }

    /// Counts one decision.
    pub fn decision(&self, stage: Stage, action: Action) {
        self.decision_cell(stage, action).inc();
    }

    fn decision_cell(&self, stage: Stage, action: Action) -> &IntCounter {
        let index = stage as usize * Action::ALL.len() + action as usize;
        self.decisions
            .get(index, || [stage.as_str(), action.as_str()])
    }

    /// Counts one reload.
    pub fn reload(&self, ok: bool) {
        self.rules_file_ok.set(i64::from(ok));
        self.reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
    }

    /// Counts one load of the threat feed named `feed` in the rule file (a
    /// download of a URL feed, a read of a file feed at a rule load).
    pub fn feed_reload(&self, feed: &str, result: crate::feeds::FeedResult) {
        self.feed_reloads
            .with_label_values(&[feed, result.as_str()])
            .inc();
    }

    /// Makes the series of the threat feed named `feed` exist, at zero for
    /// what has not happened yet, so rates and alerts see them.
    pub fn feed_seen(&self, feed: &str) {
        use crate::feeds::FeedResult;
        for result in [
            FeedResult::Success,
            FeedResult::NotModified,
            FeedResult::Failure,
        ] {
            let _ = self
                .feed_reloads
                .with_label_values(&[feed, result.as_str()]);
        }
    }

    /// Counts one upstream exchange and its duration.
    pub fn upstream(&self, class: UpstreamClass, seconds: f64) {
        let index = class.index();
        self.upstream_responses
            .get(index, || [UpstreamClass::LABELS[index], ""])
            .inc();
        self.upstream_duration.observe(seconds);
    }

    /// Observes one request's duration.
    pub fn request(&self, seconds: f64) {
        self.request_duration.observe(seconds);
    }

    /// The registry, for components that keep their own metrics (gate state).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
