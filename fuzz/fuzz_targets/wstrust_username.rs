//! The username of a WS-Trust request (`wstrust::username`).
//!
//! The first byte picks a mode. Mode 0 reads the rest as a whole body: no
//! panic, and a name it returns is trimmed, non-empty and bounded. The other
//! modes build a real request around the fuzz bytes (SOAP 1.2 or 1.1,
//! WS-Trust 2005 or 1.3 shapes, several prefixes), with a known password
//! followed by fuzz bytes in the `Password` element: the username read must
//! never contain that password.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stsgate_proxy::wstrust::{MAX_USERNAME, username};

const PASSWORD: &str = "Pa55-MARKER-correct horse";

const WSSE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
const SOAP12: &str = "http://www.w3.org/2003/05/soap-envelope";
const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";

fn check_name(name: &str) {
    assert!(!name.is_empty(), "empty username");
    assert_eq!(name.trim(), name, "username not trimmed");
    assert!(
        name.len() <= MAX_USERNAME,
        "username of {} bytes",
        name.len()
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 4 == 0 {
        if let Some(name) = username(rest) {
            check_name(&name);
        }
        return;
    }
    // Fuzz bytes: the username text, then (after the first NUL) what follows
    // the password in its element.
    let (user, after) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let (s, o, soap) = match mode % 4 {
        1 => ("s", "o", SOAP12),
        2 => ("soap", "wsse", SOAP11),
        _ => ("S", "sec", SOAP12),
    };
    let password_attr = if mode & 0x10 != 0 {
        " Type=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText\""
    } else {
        ""
    };
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><{s}:Envelope xmlns:{s}=\"{soap}\"><{s}:Header>\
             <{o}:Security xmlns:{o}=\"{WSSE}\"><{o}:UsernameToken>"
        )
        .as_bytes(),
    );
    // Password after the username, or before it: both orders occur.
    let password = {
        let mut p = format!("<{o}:Password{password_attr}>{PASSWORD}").into_bytes();
        p.extend_from_slice(after);
        p.extend_from_slice(format!("</{o}:Password>").as_bytes());
        p
    };
    if mode & 0x20 != 0 {
        body.extend_from_slice(&password);
        body.extend_from_slice(format!("<{o}:Username>").as_bytes());
        body.extend_from_slice(user);
        body.extend_from_slice(format!("</{o}:Username>").as_bytes());
    } else {
        body.extend_from_slice(format!("<{o}:Username>").as_bytes());
        body.extend_from_slice(user);
        body.extend_from_slice(format!("</{o}:Username>").as_bytes());
        body.extend_from_slice(&password);
    }
    body.extend_from_slice(
        format!(
            "</{o}:UsernameToken></{o}:Security></{s}:Header><{s}:Body><trust:RequestSecurityToken \
             xmlns:trust=\"http://docs.oasis-open.org/ws-sx/ws-trust/200512\"/></{s}:Body></{s}:Envelope>"
        )
        .as_bytes(),
    );
    let Some(name) = username(&body) else {
        return;
    };
    check_name(&name);
    // The username text itself could spell the password, or open markup
    // (CDATA, comments, elements) that moves the password out of its
    // element: then the check does not apply.
    let user_text = String::from_utf8_lossy(user);
    let plain_user = !user_text.contains(['<', '&', ']']) && !user_text.contains("MARKER");
    if plain_user {
        assert!(
            !name.contains("MARKER"),
            "the password leaked into the username: {name:?} from {:?}",
            String::from_utf8_lossy(&body)
        );
    }
});
