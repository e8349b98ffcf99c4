//! Differential: the single-pass scan behind `wstrust::username` and
//! `wstrust::credentials` against the quick-xml reader it replaced
//! (`wstrust::reference`). They must agree on every input.
//!
//! The first byte picks a mode. Mode 0 reads the rest as a whole body. The
//! other modes build a real request around the fuzz bytes, split at NUL
//! bytes into: markup placed at the start of the SOAP header, the username
//! text, the password text and the password's attributes (prefixes and
//! namespace spellings vary with the mode), so that the fuzzer spends its
//! time inside the parts the scan cares about.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stsgate_proxy::wstrust::{credentials, reference, username};

const WSSE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
const SOAP12: &str = "http://www.w3.org/2003/05/soap-envelope";
const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";

fn check(body: &[u8]) {
    let fast = username(body);
    let slow = reference::username(body);
    assert_eq!(
        fast.as_deref(),
        slow.as_deref(),
        "username differs on {:?}",
        String::from_utf8_lossy(body)
    );
    let fast_both = credentials(body);
    let slow_both = reference::credentials(body);
    assert_eq!(
        fast_both,
        slow_both,
        "credentials differ on {:?}",
        String::from_utf8_lossy(body)
    );
    assert_eq!(
        fast_both.map(|c| c.user),
        fast,
        "credentials.user is not username"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 4 == 0 {
        check(rest);
        return;
    }
    let mut parts = rest.splitn(4, |&b| b == 0);
    let header = parts.next().unwrap_or_default();
    let user = parts.next().unwrap_or_default();
    let password = parts.next().unwrap_or_default();
    let password_attrs = parts.next().unwrap_or_default();
    let (s, o, soap) = match mode % 4 {
        1 => ("s", "o", SOAP12),
        2 => ("soap", "wsse", SOAP11),
        _ => ("S", "", SOAP12), // wsse as the default namespace
    };
    let colon = |p: &str| {
        if p.is_empty() {
            String::new()
        } else {
            format!("{p}:")
        }
    };
    let (sc, oc) = (colon(s), colon(o));
    let o_decl = if o.is_empty() {
        format!("xmlns=\"{WSSE}\"")
    } else {
        format!("xmlns:{o}=\"{WSSE}\"")
    };
    let mut body = Vec::new();
    body.extend_from_slice(format!("<{sc}Envelope xmlns:{s}=\"{soap}\"><{sc}Header>").as_bytes());
    body.extend_from_slice(header);
    body.extend_from_slice(format!("<{oc}Security {o_decl}><{oc}UsernameToken>").as_bytes());
    let username_element = |body: &mut Vec<u8>| {
        body.extend_from_slice(format!("<{oc}Username>").as_bytes());
        body.extend_from_slice(user);
        body.extend_from_slice(format!("</{oc}Username>").as_bytes());
    };
    if mode & 0x20 == 0 {
        username_element(&mut body);
    }
    body.extend_from_slice(format!("<{oc}Password ").as_bytes());
    body.extend_from_slice(password_attrs);
    body.extend_from_slice(b">");
    body.extend_from_slice(password);
    body.extend_from_slice(format!("</{oc}Password>").as_bytes());
    if mode & 0x20 != 0 {
        username_element(&mut body);
    }
    body.extend_from_slice(
        format!("</{oc}UsernameToken></{oc}Security></{sc}Header><{sc}Body/></{sc}Envelope>")
            .as_bytes(),
    );
    check(&body);
});
