//! Answers the gate gives itself, mapped in one place: the blocked response
//! (PRODUCT.md §4.3), redirects, and the 4xx / 5xx of upstream and client
//! errors. None carries internal detail.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use std::time::{Duration, SystemTime};

use crate::config::BlockedStyle;
use crate::proxy_body::{Body, full};
use crate::signin::Protocol;

/// Every answer the gate gives without the upstream's help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal<'a> {
    /// A refused request: 500 SOAP fault or 403, per `blocked.style`.
    Blocked(BlockedStyle),
    /// A `redirect` failure action: 302.
    Redirect(&'a str),
    /// A request the gate cannot read: 400, 408, 413 (431 is hyper's own).
    ClientError(StatusCode),
    /// The upstream could not be reached: 502.
    UpstreamUnreachable,
    /// The upstream did not answer in time: 504.
    UpstreamTimeout,
}

/// The answer for `refusal`: statuses mapped in one place.
pub fn answer(refusal: Refusal<'_>) -> Response<Body> {
    match refusal {
        Refusal::Blocked(style) => blocked(style),
        Refusal::Redirect(location) => redirect(location),
        Refusal::ClientError(status) => plain(status, status.canonical_reason().unwrap_or("")),
        Refusal::UpstreamUnreachable => plain(StatusCode::BAD_GATEWAY, "Bad Gateway\n"),
        Refusal::UpstreamTimeout => plain(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout\n"),
    }
}

/// The blocked response: a SOAP 1.2 fault that a client cannot tell from a
/// failed sign-in at the STS, or a plain 403.
pub fn blocked(style: BlockedStyle) -> Response<Body> {
    match style {
        BlockedStyle::SoapFault => {
            let mut r = Response::new(full(soap_fault(SystemTime::now())));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/soap+xml; charset=utf-8"),
            );
            r
        }
        BlockedStyle::Forbidden => plain(StatusCode::FORBIDDEN, "Forbidden\n"),
    }
}

/// The blocked response on the endpoint of `protocol`: with `soap_fault`
/// style, each endpoint's own failed sign-in (WS-Trust: the SOAP fault;
/// ROPC: 400 `invalid_grant`, MSIS9659; forms: the sign-in page again with
/// its error, posting back to `action`, the user name filled in, from
/// `page`: [`FORMS_PAGE`] or `blocked.forms_page`); `forbidden` is 403
/// everywhere.
pub fn blocked_for(
    style: BlockedStyle,
    protocol: Protocol,
    action: &str,
    user: Option<&str>,
    page: &str,
) -> Response<Body> {
    match (style, protocol) {
        (BlockedStyle::Forbidden, _) | (_, Protocol::WsTrust) => blocked(style),
        (BlockedStyle::SoapFault, Protocol::OAuth2Ropc) => {
            let mut r = Response::new(full(Bytes::from_static(ROPC_FAILURE.as_bytes())));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(ROPC_CONTENT_TYPE),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            r
        }
        (BlockedStyle::SoapFault, Protocol::Forms) => {
            let mut r = Response::new(full(fill_page(
                page,
                action,
                user.unwrap_or(""),
                FORMS_ERROR,
            )));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(FORMS_CONTENT_TYPE),
            );
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache,no-store"),
            );
            h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            h.insert(header::EXPIRES, HeaderValue::from_static("-1"));
            r
        }
    }
}

/// What ADFS answers a password grant with a wrong user or password.
pub const ROPC_FAILURE: &str = r#"{"error":"invalid_grant","error_description":"MSIS9659: Invalid 'username' or 'password'."}"#;
/// The content type of ADFS's token endpoint answers.
pub const ROPC_CONTENT_TYPE: &str = "application/json;charset=UTF-8";
/// The error the forms sign-in page shows for a wrong user or password.
pub const FORMS_ERROR: &str =
    "Incorrect user ID or password. Type the correct user ID and password, and try again.";
/// The content type of the forms sign-in page.
pub const FORMS_CONTENT_TYPE: &str = "text/html; charset=utf-8";
/// The sign-in page (ADFS's default look), with `{action}`, `{username}`
/// and `{error}` to fill in.
pub const FORMS_PAGE: &str = include_str!("../../../testdata/forms/signin-page.html");

/// Largest `blocked.forms_page` file.
pub const MAX_FORMS_PAGE: u64 = 256 * 1024;

/// Reads a `blocked.forms_page` file: UTF-8, at most [`MAX_FORMS_PAGE`]
/// bytes, with an `{error}` placeholder (the error text is what clients and
/// tools read). The message never holds the file's contents.
pub fn read_forms_page(path: &std::path::Path) -> Result<String, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("blocked.forms_page {}: {e}", path.display()))?
        .len();
    if size > MAX_FORMS_PAGE {
        return Err(format!(
            "blocked.forms_page {}: {size} bytes, at most {MAX_FORMS_PAGE}",
            path.display()
        ));
    }
    let page = std::fs::read_to_string(path)
        .map_err(|e| format!("blocked.forms_page {}: {e}", path.display()))?;
    if !page.contains("{error}") {
        return Err(format!(
            "blocked.forms_page {}: no {{error}} placeholder (where the sign-in error goes)",
            path.display()
        ));
    }
    Ok(page)
}

/// The forms sign-in page posting to `action`, with `user` filled in and
/// `error` shown; every value HTML-escaped.
pub fn forms_page(action: &str, user: &str, error: &str) -> Bytes {
    fill_page(FORMS_PAGE, action, user, error)
}

/// `page` with `{action}`, `{username}` and `{error}` replaced by the
/// HTML-escaped values (any other `{` stays as it is).
pub fn fill_page(page: &str, action: &str, user: &str, error: &str) -> Bytes {
    let mut out = String::with_capacity(page.len() + action.len() + user.len() + error.len());
    let mut rest = page;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let (value, len) = if rest.starts_with("{action}") {
            (action, "{action}".len())
        } else if rest.starts_with("{username}") {
            (user, "{username}".len())
        } else if rest.starts_with("{error}") {
            (error, "{error}".len())
        } else {
            out.push('{');
            rest = &rest[1..];
            continue;
        };
        html_escape(&mut out, value);
        rest = &rest[len..];
    }
    out.push_str(rest);
    Bytes::from(out)
}

fn html_escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// A 302 to `location` (validated when the rules were compiled).
pub fn redirect(location: &str) -> Response<Body> {
    let mut r = plain(StatusCode::FOUND, "");
    match HeaderValue::from_str(location) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
        }
        Err(_) => *r.status_mut() = StatusCode::FORBIDDEN,
    }
    r
}

/// A short text answer with `status`.
pub fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The fault ADFS sends for a wrong password (ID3242), with fresh
/// timestamps like the real one.
pub fn soap_fault(now: SystemTime) -> Bytes {
    let created = humantime::format_rfc3339_millis(now);
    let expires = humantime::format_rfc3339_millis(now + Duration::from_secs(300));
    Bytes::from(format!(
        concat!(
            r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://www.w3.org/2005/08/addressing" "#,
            r#"xmlns:u="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"><s:Header>"#,
            r#"<a:Action s:mustUnderstand="1">http://www.w3.org/2005/08/addressing/soap/fault</a:Action>"#,
            r#"<o:Security s:mustUnderstand="1" xmlns:o="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">"#,
            r#"<u:Timestamp u:Id="_0"><u:Created>{created}</u:Created><u:Expires>{expires}</u:Expires></u:Timestamp></o:Security>"#,
            r#"</s:Header><s:Body><s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode>"#,
            r#"<s:Value xmlns:a="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">a:FailedAuthentication</s:Value>"#,
            r#"</s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">ID3242: The security token could not be authenticated or authorized.</s:Text>"#,
            r#"</s:Reason></s:Fault></s:Body></s:Envelope>"#
        ),
        created = created,
        expires = expires
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_page_fills_and_escapes() {
        let page = forms_page("/adfs/ls/?wa=wsignin1.0&x=1", "a\"<b>@c", FORMS_ERROR);
        let page = std::str::from_utf8(&page).unwrap();
        assert!(
            page.contains(r#"action="/adfs/ls/?wa=wsignin1.0&amp;x=1""#),
            "{page}"
        );
        assert!(page.contains(r#"value="a&quot;&lt;b&gt;@c""#), "{page}");
        assert!(page.contains(FORMS_ERROR));
        assert!(!page.contains("{error}") && !page.contains("{action}"));
        assert_eq!(
            crate::signin::classify_forms(200, &http::HeaderMap::new(), page.as_bytes()),
            crate::signin::Outcome::Failure
        );
        let fresh = forms_page("/adfs/ls/", "", "");
        assert_eq!(
            crate::signin::classify_forms(200, &http::HeaderMap::new(), &fresh),
            crate::signin::Outcome::Unknown
        );
    }

    #[test]
    fn ropc_refusal_is_an_invalid_grant() {
        let r = blocked_for(
            BlockedStyle::SoapFault,
            Protocol::OAuth2Ropc,
            "/",
            None,
            FORMS_PAGE,
        );
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            crate::signin::classify_ropc(400, ROPC_FAILURE.as_bytes()),
            crate::signin::Outcome::Failure
        );
        let r = blocked_for(
            BlockedStyle::Forbidden,
            Protocol::Forms,
            "/",
            None,
            FORMS_PAGE,
        );
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn fault_matches_the_sts_fixture_but_for_timestamps() {
        let fixture =
            include_str!("../../../testdata/wstrust/fault-failed-authentication.xml").trim();
        let ours = soap_fault(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_428_001));
        let ours = std::str::from_utf8(&ours).unwrap();
        let strip = |s: &str| {
            let mut out = String::new();
            let mut rest = s;
            while let Some(i) = rest.find("<u:Created>") {
                out.push_str(&rest[..i]);
                rest = &rest[rest.find("</u:Expires>").unwrap()..];
            }
            out + rest
        };
        assert_eq!(strip(ours), strip(fixture));
        assert!(
            ours.contains("<u:Created>2026-11-23T10:00:01.000Z</u:Created>"),
            "{ours}"
        );
    }
}
