//! The ROPC and forms sign-in readers (`stsgate_proxy::signin`) on any body
//! and query: no panic, deterministic, within the limits, and in agreement
//! with a naive reference decoder (split on `&` and `=`, strict `%XX`, `+`
//! as a space, names compared ignoring ASCII case) whenever the reference
//! reads the body without ambiguity. Also the answer classifiers on any
//! status and body.
//!
//! Byte 0 picks the protocol (even: ROPC, odd: forms); byte 1 the length of
//! the query (0: none); the rest is query then body.

#![no_main]

use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use stsgate_proxy::signin::{self, Outcome, Protocol, Read};
use stsgate_proxy::wstrust::{MAX_PASSWORD, MAX_USERNAME};

/// Strict decoding, or `None`.
fn decode(raw: &[u8]) -> Option<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(raw.get(i + 1..i + 3)?).ok()?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The values of `name` in `form`; `None` if any name fails to decode.
fn values(form: &[u8], name: &str) -> Option<Vec<Option<String>>> {
    let mut found = Vec::new();
    for pair in form.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[..0]),
        };
        if decode(k)?.eq_ignore_ascii_case(name) {
            found.push(decode(v));
        }
    }
    Some(found)
}

fuzz_target!(|data: &[u8]| {
    let [pick, qlen, rest @ ..] = data else {
        return;
    };
    let protocol = if pick % 2 == 0 {
        Protocol::OAuth2Ropc
    } else {
        Protocol::Forms
    };
    let qlen = usize::from(*qlen).min(rest.len());
    let (query, body) = rest.split_at(qlen);
    let query = (qlen > 0)
        .then(|| std::str::from_utf8(query).ok())
        .flatten();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let read = signin::read(protocol, &headers, query, body);
    assert_eq!(
        read,
        signin::read(protocol, &headers, query, body),
        "not deterministic"
    );
    let (user_name, password_name) = match protocol {
        Protocol::OAuth2Ropc => ("username", "password"),
        _ => ("UserName", "Password"),
    };
    if let Read::SignIn(c) = &read {
        assert!(!c.user.is_empty() && c.user.len() <= MAX_USERNAME);
        assert_eq!(c.user.trim(), c.user);
        assert!(c.password.as_ref().is_none_or(|p| p.len() <= MAX_PASSWORD));
    }
    // The reference, on bodies it reads without doubt and a query without credentials.
    let clean_query = query.is_none();
    if let (true, Some(users), Some(passwords), Some(grants), Some(fields)) = (
        clean_query && !body.is_empty(),
        values(body, user_name),
        values(body, password_name),
        values(body, "grant_type"),
        values(body, "AuthMethod"),
    ) {
        let fields_ok =
            body.split(|&b| b == b'&').filter(|p| !p.is_empty()).count() <= signin::MAX_FIELDS;
        let single = |v: &Vec<Option<String>>| v.len() <= 1 && v.iter().all(Option::is_some);
        let third_ok = match protocol {
            Protocol::OAuth2Ropc => single(&grants),
            _ => single(&fields),
        };
        let sizes_ok = users.iter().flatten().all(|u| u.len() <= MAX_USERNAME)
            && passwords.iter().flatten().all(|p| p.len() <= MAX_PASSWORD)
            && grants.iter().flatten().all(|g| g.len() <= MAX_USERNAME)
            && fields.iter().flatten().all(|g| g.len() <= MAX_USERNAME);
        if fields_ok && single(&users) && single(&passwords) && third_ok && sizes_ok {
            let user = users
                .first()
                .cloned()
                .flatten()
                .map(|u| u.trim().to_string());
            let password = passwords.first().cloned().flatten();
            let grant_ok = protocol != Protocol::OAuth2Ropc
                || grants
                    .first()
                    .cloned()
                    .flatten()
                    .is_some_and(|g| g.trim().eq_ignore_ascii_case("password"));
            match (&read, user.filter(|u| !u.is_empty() && grant_ok)) {
                (Read::SignIn(c), Some(u)) => {
                    assert_eq!(c.user, u);
                    assert_eq!(c.password.as_deref(), password.as_deref());
                }
                (Read::NoSignIn, None) => {}
                (got, want) => panic!("gate read {got:?}, reference {want:?}"),
            }
        }
    }
    // The classifiers on the same bytes as an answer.
    let status = 100 + u16::from(*pick) * 2 % 500;
    if signin::classify_ropc(status, body) == Outcome::Success {
        assert_eq!(status, 200);
    }
    let mut answer_headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(&body[..body.len().min(64)]) {
        answer_headers.insert(header::SET_COOKIE, v);
    }
    let forms = signin::classify_forms(status, &answer_headers, body);
    assert_eq!(forms, signin::classify_forms(status, &answer_headers, body));
});
