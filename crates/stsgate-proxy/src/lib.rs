//! # stsgate-proxy
//!
//! Everything of stsgate that touches sockets and files: the listeners (TLS
//! or plain, HTTP/1.1 and HTTP/2), the client IP, the corridor of stages
//! ([`gate`]), the upstream client, the blocked response, hot reload of the
//! rule file, the decision log and the admin listener. The decisions
//! themselves come from the pure `stsgate-rules` crate.

pub mod admin;
pub mod alerts;
pub mod blocked;
pub mod client_ip;
pub mod config;
pub mod corridor;
pub mod decision_log;
pub mod delay;
pub mod directory;
pub mod explain;
pub mod feeds;
pub mod gate;
pub mod geoip;
pub mod idle;
pub mod metrics;
pub mod paths;
pub mod preflight;
pub mod proxy_body;
pub mod proxy_protocol;
pub mod recent;
pub mod reload;
pub mod server;
pub mod signin;
pub mod tls;
pub mod trusted;
pub mod ui;
pub mod upstream;
pub mod wstrust;

pub use config::Config;
pub use server::Server;

#[cfg(test)]
pub(crate) mod test_support {
    use http::{HeaderMap, HeaderName};

    /// A header map from name/value pairs (names in any case, repeats kept).
    pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }
}
