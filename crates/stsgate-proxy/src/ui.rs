//! The admin page (`GET /ui` on the admin listener): one hand-written HTML
//! page, one script and one style sheet, embedded in the binary. No build
//! step, no CDN, no external font. The page signs in with the API's bearer
//! token (kept in `sessionStorage`, sent as `Authorization`, never a
//! cookie: no CSRF surface) and calls `/api/v1` like any other client.
//!
//! Served with a strict Content-Security-Policy (scripts and styles from
//! the page's own origin only, no inline code, no framing), `nosniff`,
//! `Referrer-Policy: no-referrer` and `Cache-Control: no-store`. The script
//! builds the DOM with `textContent` only: user names and user agents are
//! attacker-controlled and render as text.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::proxy_body::{Body, full};

/// The page's policy: nothing but its own script, style and API.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// Is `path` the page or one of its assets?
pub fn is_page(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// The page (`/ui`, `/ui/`) or an asset, with the hardening headers; `None`
/// for anything else under `/ui/`.
pub fn asset(path: &str) -> Option<Response<Body>> {
    let (body, content_type) = match path {
        "/ui" | "/ui/" => (INDEX_HTML, "text/html; charset=utf-8"),
        "/ui/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/ui/app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut r = Response::new(full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_assets_carry_the_policy() {
        for p in ["/ui", "/ui/", "/ui/app.js", "/ui/app.css"] {
            let r = asset(p).expect(p);
            assert_eq!(
                r.headers()[header::CONTENT_SECURITY_POLICY],
                CONTENT_SECURITY_POLICY
            );
            assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
        assert!(asset("/ui/other").is_none());
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }

    #[test]
    fn the_script_never_writes_html() {
        for bad in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!APP_JS.contains(bad), "app.js uses {bad}");
        }
        // No inline script or style in the page (the policy would block them).
        assert!(!INDEX_HTML.contains("<script>") && !INDEX_HTML.contains("style="));
        let inline_handler = INDEX_HTML.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!inline_handler, "inline event handler in index.html");
    }
}
