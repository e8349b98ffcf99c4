//! Every password door of the farm: which sign-in protocol a filtered
//! request speaks, who is signing in, and what the STS answered.
//!
//! | protocol | path (default `filter.paths`) | credentials | success | failure |
//! | --- | --- | --- | --- | --- |
//! | `wstrust` | `/adfs/services/trust/…` | SOAP `UsernameToken` ([`crate::wstrust`]) | 200 `RequestSecurityTokenResponse` | 500 fault `FailedAuthentication` |
//! | `oauth2_ropc` | `/adfs/oauth2/token` | form `grant_type=password`, `username`, `password` | 200 JSON with `access_token` | 400 JSON `error = invalid_grant` |
//! | `forms` | `/adfs/ls` (also `/adfs/ls/IdpInitiatedSignOn.aspx`) | form `UserName`, `Password` | 302 setting the `MSISAuth` cookie | 200, the sign-in page with its `errorText` |
//!
//! The form reader ([`read_form`]) is one pass over a body the gate has
//! already capped at `limits.max_body`: it allocates only for a username or
//! password that needs decoding (at most [`MAX_USERNAME`] /
//! [`MAX_PASSWORD`] bytes), reads at most [`MAX_FIELDS`] fields and refuses
//! what the STS could read differently from the gate: a credential field
//! given twice (names compared ignoring ASCII case, as .NET does), a broken
//! or `%u` escape in a field name or a credential, a username or password
//! that is not UTF-8 or too long. Such a request is answered 400 and never
//! forwarded. See docs/DOMAIN.md for the answer shapes.

use std::borrow::Cow;

use http::{HeaderMap, Method, header};

use crate::wstrust::{self, Credentials, MAX_PASSWORD, MAX_USERNAME};

/// Most `name=value` fields read from a form body or query.
pub const MAX_FIELDS: usize = 256;

pub use stsgate_rules::Protocol;

/// The path prefix (ASCII case ignored, normalised) of the ROPC token endpoint.
pub const ROPC_PATH: &str = "/adfs/oauth2/token";
/// The path prefix of the passive endpoint with the forms sign-in page.
pub const FORMS_PATH: &str = "/adfs/ls";

/// The protocol of a filtered path (as [`crate::paths::normalize`] leaves
/// it): the token endpoint, the passive endpoint, else WS-Trust.
pub fn protocol_for(path: &str) -> Protocol {
    let path = crate::paths::normalize(path);
    let under = |prefix: &str| {
        path.len() >= prefix.len()
            && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    };
    if under(ROPC_PATH) {
        Protocol::OAuth2Ropc
    } else if under(FORMS_PATH) {
        Protocol::Forms
    } else {
        Protocol::WsTrust
    }
}

/// Can a request with this method carry a sign-in? Form protocols sign in
/// with POST only: a GET of the sign-in page (or of anything else there)
/// is forwarded untouched, without a decision. WS-Trust decides every
/// method, as before.
pub fn signs_in_with(protocol: Protocol, method: &Method) -> bool {
    match protocol {
        Protocol::WsTrust => true,
        Protocol::OAuth2Ropc | Protocol::Forms => method == Method::POST,
    }
}

/// Why a form request was not read: it is refused with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormError {
    /// A credential field (or `grant_type`) appears twice.
    Repeated,
    /// A broken `%` escape (or .NET's `%uXXXX`) in a field name or a
    /// credential, or a credential that is not UTF-8 once decoded.
    BadEncoding,
    /// More than [`MAX_FIELDS`] fields.
    TooManyFields,
    /// A username or password longer than the limits.
    TooLong,
    /// A body that is not `application/x-www-form-urlencoded`.
    NotAForm,
    /// Credentials in the query string.
    CredentialsInQuery,
}

impl FormError {
    /// The `reason` label of `stsgate_rejected_requests_total`.
    pub fn reason(self) -> &'static str {
        "bad_form"
    }
}

/// What a request's body tells about the sign-in.
#[derive(Debug, PartialEq, Eq)]
pub enum Read<'a> {
    /// A sign-in: its username and, when there is one, password.
    SignIn(Credentials<'a>),
    /// Read, but no sign-in (no username; another grant type; an unreadable
    /// WS-Trust body): decided with the user unknown.
    NoSignIn,
    /// Not readable without ambiguity: refused with 400, never forwarded.
    Refused(FormError),
}

/// Reads the credentials of a filtered request of `protocol`.
pub fn read<'a>(
    protocol: Protocol,
    headers: &HeaderMap,
    query: Option<&'a str>,
    body: &'a [u8],
) -> Read<'a> {
    let names: [&str; 3] = match protocol {
        Protocol::WsTrust => {
            return match wstrust::credentials(body) {
                Some(c) => Read::SignIn(c),
                None => Read::NoSignIn,
            };
        }
        Protocol::OAuth2Ropc => ["username", "password", "grant_type"],
        Protocol::Forms => ["UserName", "Password", "AuthMethod"],
    };
    if let Some(query) = query {
        match read_form(query.as_bytes(), names) {
            Ok([None, None, _]) => {}
            Ok(_) => return Read::Refused(FormError::CredentialsInQuery),
            Err(e) => return Read::Refused(e),
        }
    }
    if body.is_empty() {
        return Read::NoSignIn;
    }
    if !is_form(headers) {
        return Read::Refused(FormError::NotAForm);
    }
    let [user, password, third] = match read_form(body, names) {
        Ok(found) => found,
        Err(e) => return Read::Refused(e),
    };
    if protocol == Protocol::OAuth2Ropc
        && !third.is_some_and(|g| g.trim().eq_ignore_ascii_case("password"))
    {
        // Another grant (refresh token, code, client credentials): no password guessed.
        return Read::NoSignIn;
    }
    let user = match user {
        Some(Cow::Borrowed(u)) if !u.trim().is_empty() => Cow::Borrowed(u.trim()),
        Some(Cow::Owned(u)) if !u.trim().is_empty() => Cow::Owned(u.trim().to_string()),
        _ => return Read::NoSignIn,
    };
    Read::SignIn(Credentials { user, password })
}

/// `Content-Type: application/x-www-form-urlencoded` (parameters allowed).
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Reads the fields `names` (ASCII case ignored) of a form body or query:
/// each decoded (`+` is a space, `%XX` a byte), `None` when absent. The
/// first two are the username and password and bounded by their limits;
/// the third is bounded by the username's.
pub fn read_form<'a>(
    body: &'a [u8],
    names: [&str; 3],
) -> Result<[Option<Cow<'a, str>>; 3], FormError> {
    let limits = [MAX_USERNAME, MAX_PASSWORD, MAX_USERNAME];
    let mut found: [Option<Cow<'a, str>>; 3] = [None, None, None];
    let mut fields = 0;
    for pair in body.split(|&b| b == b'&') {
        if pair.is_empty() {
            continue;
        }
        fields += 1;
        if fields > MAX_FIELDS {
            return Err(FormError::TooManyFields);
        }
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        let mut slot = None;
        for (i, name) in names.iter().enumerate() {
            if key_is(key, name)? {
                slot = Some(i);
                break;
            }
        }
        let Some(i) = slot else { continue };
        if found[i].is_some() {
            return Err(FormError::Repeated);
        }
        found[i] = Some(decode(value, limits[i])?);
    }
    Ok(found)
}

/// The value of one hex digit.
fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Iterates the decoded bytes of a form component; `Err` on a broken escape.
fn decoded(raw: &[u8]) -> impl Iterator<Item = Result<u8, FormError>> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *raw.get(i)?;
        i += 1;
        Some(match b {
            b'+' => Ok(b' '),
            b'%' => match (
                raw.get(i).copied().and_then(hex),
                raw.get(i + 1).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    i += 2;
                    Ok(h << 4 | l)
                }
                _ => Err(FormError::BadEncoding),
            },
            b => Ok(b),
        })
    })
}

/// Is the (encoded) field name `key` the name `name`, ignoring ASCII case?
/// Allocates nothing.
fn key_is(key: &[u8], name: &str) -> Result<bool, FormError> {
    let mut want = name.bytes();
    let mut same = true;
    for b in decoded(key) {
        let b = b?;
        match want.next() {
            Some(w) if w.eq_ignore_ascii_case(&b) => {}
            _ => same = false,
        }
    }
    Ok(same && want.next().is_none())
}

/// Decodes a value of at most `limit` bytes (decoded), borrowing when there
/// is nothing to decode.
fn decode(raw: &[u8], limit: usize) -> Result<Cow<'_, str>, FormError> {
    if !raw.contains(&b'%') && !raw.contains(&b'+') {
        if raw.len() > limit {
            return Err(FormError::TooLong);
        }
        return std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|_| FormError::BadEncoding);
    }
    let mut out = Vec::with_capacity(raw.len().min(limit));
    for b in decoded(raw) {
        if out.len() == limit {
            return Err(FormError::TooLong);
        }
        out.push(b?);
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| FormError::BadEncoding)
}

/// What the STS answered to a sign-in, as far as the gate cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A good sign-in.
    Success,
    /// A wrong password, an unknown user or a policy denial.
    Failure,
    /// Anything else (another error, MFA prompt, 503...).
    Unknown,
}

impl Outcome {
    /// `success`, `failure` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Unknown => "unknown",
        }
    }
}

/// Classifies the STS's answer to a request of `protocol`.
pub fn classify(protocol: Protocol, status: u16, headers: &HeaderMap, body: &[u8]) -> Outcome {
    match protocol {
        Protocol::WsTrust => match wstrust::classify_answer(status, body) {
            wstrust::Answer::Success => Outcome::Success,
            wstrust::Answer::FailedAuthentication => Outcome::Failure,
            wstrust::Answer::OtherFault | wstrust::Answer::Unknown => Outcome::Unknown,
        },
        Protocol::OAuth2Ropc => classify_ropc(status, body),
        Protocol::Forms => classify_forms(status, headers, body),
    }
}

/// ROPC: 200 with a JSON object holding `access_token` is a success; 400
/// with `"error": "invalid_grant"` (ADFS's MSIS9659 wrong user or password,
/// MSIS7068 access denied) a failure.
pub fn classify_ropc(status: u16, body: &[u8]) -> Outcome {
    #[derive(serde::Deserialize)]
    struct Token<'a> {
        #[serde(borrow, default)]
        error: Option<Cow<'a, str>>,
        #[serde(default)]
        access_token: Option<serde::de::IgnoredAny>,
    }
    let Ok(token) = serde_json::from_slice::<Token<'_>>(body) else {
        return Outcome::Unknown;
    };
    match (status, token.access_token, token.error.as_deref()) {
        (200, Some(_), None) => Outcome::Success,
        (400, None, Some("invalid_grant")) => Outcome::Failure,
        _ => Outcome::Unknown,
    }
}

/// Forms: a 302 setting the `MSISAuth` cookie (or its continuation
/// `MSISAuth1`, …) is a success; a 200 HTML page whose `errorText` element
/// holds text (the sign-in page shown again) a failure.
pub fn classify_forms(status: u16, headers: &HeaderMap, body: &[u8]) -> Outcome {
    match status {
        302 | 303 => {
            let sets_auth = headers.get_all(header::SET_COOKIE).iter().any(|v| {
                let name = v
                    .as_bytes()
                    .split(|&b| b == b'=')
                    .next()
                    .unwrap_or_default();
                let name = name.trim_ascii();
                name.len() >= 8
                    && name[..8].eq_ignore_ascii_case(b"MSISAuth")
                    && name[8..].iter().all(u8::is_ascii_digit)
            });
            if sets_auth {
                Outcome::Success
            } else {
                Outcome::Unknown
            }
        }
        200 if error_text(body).is_some_and(|t| !t.trim_ascii().is_empty()) => Outcome::Failure,
        _ => Outcome::Unknown,
    }
}

/// The text of the sign-in page's `id="errorText"` element, up to the next tag.
fn error_text(body: &[u8]) -> Option<&[u8]> {
    const MARK: &[u8] = b"id=\"errorText\"";
    let at = body.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let rest = &body[at..];
    let open = rest.iter().position(|&b| b == b'>')? + 1;
    let rest = &rest[open..];
    let close = rest.iter().position(|&b| b == b'<')?;
    Some(&rest[..close])
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn form() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        h
    }

    fn user_of(r: &Read<'_>) -> Option<(String, Option<String>)> {
        match r {
            Read::SignIn(c) => Some((
                c.user.to_string(),
                c.password.as_ref().map(|p| p.to_string()),
            )),
            _ => None,
        }
    }

    #[test]
    fn protocols_by_path() {
        #[rustfmt::skip]
        let cases = [
            ("/adfs/services/trust/2005/usernamemixed", Protocol::WsTrust),
            ("/adfs/oauth2/token", Protocol::OAuth2Ropc),
            ("/ADFS/OAuth2/Token/", Protocol::OAuth2Ropc),
            ("/adfs//oauth2/%74oken", Protocol::OAuth2Ropc),
            ("/adfs/ls/", Protocol::Forms),
            ("/adfs/ls", Protocol::Forms),
            ("/adfs/ls/IdpInitiatedSignOn.aspx", Protocol::Forms),
            ("/adfs/x/../ls/", Protocol::Forms),
        ];
        for (path, want) in cases {
            assert_eq!(protocol_for(path), want, "{path}");
        }
        assert!(!signs_in_with(Protocol::Forms, &Method::GET));
        assert!(signs_in_with(Protocol::Forms, &Method::POST));
        assert!(signs_in_with(Protocol::WsTrust, &Method::GET));
    }

    #[test]
    fn ropc_bodies() {
        let h = form();
        type Case<'a> = (&'a str, Option<(&'a str, Option<&'a str>)>);
        let cases: &[Case<'_>] = &[
            (
                "grant_type=password&username=alice%40contoso.com&password=p%26ss+word&client_id=x",
                Some(("alice@contoso.com", Some("p&ss word"))),
            ),
            (
                "client_id=x&password=pw&username=bob&grant_type=password",
                Some(("bob", Some("pw"))),
            ),
            ("grant_type=password&username=bob", Some(("bob", None))),
            (
                "GRANT_TYPE=Password&UserName=bob&Password=",
                Some(("bob", Some(""))),
            ),
            (
                "grant_type=password&username=%20%20bob+&password=x",
                Some(("bob", Some("x"))),
            ),
            (
                "grant_type=password&username=d%C3%A9j%C3%A0&password=x",
                Some(("déjà", Some("x"))),
            ),
            (
                "grant_type=password&user%6Eame=carol&password=x",
                Some(("carol", Some("x"))),
            ),
            (
                "grant_type=refresh_token&refresh_token=x&username=bob&password=x",
                None,
            ),
            ("username=bob&password=x", None),
            ("grant_type=password&username=&password=x", None),
            ("grant_type=password&password=x", None),
            ("&&grant_type=password&&username=bob&&", Some(("bob", None))),
        ];
        for (body, want) in cases {
            let got = read(Protocol::OAuth2Ropc, &h, None, body.as_bytes());
            let want = want.map(|(u, p)| (u.to_string(), p.map(str::to_string)));
            assert_eq!(user_of(&got), want, "{body}");
            if want.is_none() {
                assert_eq!(got, Read::NoSignIn, "{body}");
            }
        }
    }

    #[test]
    fn ambiguous_bodies_are_refused() {
        let h = form();
        #[rustfmt::skip]
        let cases = [
            ("grant_type=password&username=a&username=b&password=x", FormError::Repeated),
            ("grant_type=password&username=a&UserName=b&password=x", FormError::Repeated),
            ("grant_type=password&username=a&user%6eame=b&password=x", FormError::Repeated),
            ("grant_type=password&grant_type=password&username=a", FormError::Repeated),
            ("grant_type=password&username=a&password=x&password=y", FormError::Repeated),
            ("grant_type=password&username=a%zz&password=x", FormError::BadEncoding),
            ("grant_type=password&username=a&password=%", FormError::BadEncoding),
            ("grant_type=password&username=a&password=%4", FormError::BadEncoding),
            ("grant_type=password&%u0075sername=a&password=x", FormError::BadEncoding),
            ("grant_type=password&username=%FF&password=x", FormError::BadEncoding),
        ];
        for (body, want) in cases {
            assert_eq!(
                read(Protocol::OAuth2Ropc, &h, None, body.as_bytes()),
                Read::Refused(want),
                "{body}"
            );
        }
        let many = "a=1&".repeat(MAX_FIELDS + 1);
        assert_eq!(
            read(Protocol::OAuth2Ropc, &h, None, many.as_bytes()),
            Read::Refused(FormError::TooManyFields)
        );
        let long = format!(
            "grant_type=password&username={}",
            "a".repeat(MAX_USERNAME + 1)
        );
        assert_eq!(
            read(Protocol::OAuth2Ropc, &h, None, long.as_bytes()),
            Read::Refused(FormError::TooLong)
        );
        let long = format!(
            "grant_type=password&username=a&password={}",
            "%41".repeat(MAX_PASSWORD + 1)
        );
        assert_eq!(
            read(Protocol::OAuth2Ropc, &h, None, long.as_bytes()),
            Read::Refused(FormError::TooLong)
        );
        // A bad escape in a field the gate does not read is the STS's business.
        assert!(matches!(
            read(
                Protocol::OAuth2Ropc,
                &h,
                None,
                b"grant_type=password&username=a&scope=%zz"
            ),
            Read::SignIn(_)
        ));
        // Not a form, or credentials in the query.
        let mut json = HeaderMap::new();
        json.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("multipart/form-data; boundary=x"),
        );
        assert_eq!(
            read(Protocol::Forms, &json, None, b"--x\r\n"),
            Read::Refused(FormError::NotAForm)
        );
        assert_eq!(
            read(
                Protocol::Forms,
                &h,
                Some("wa=wsignin1.0&Password=x"),
                b"UserName=a"
            ),
            Read::Refused(FormError::CredentialsInQuery)
        );
        assert_eq!(
            read(Protocol::Forms, &json, Some("wa=wsignin1.0"), b""),
            Read::NoSignIn
        );
    }

    #[test]
    fn forms_bodies() {
        let h = form();
        let got = read(
            Protocol::Forms,
            &h,
            Some("client-request-id=1b2c&wa=wsignin1.0&wtrealm=urn%3afederation%3aMicrosoftOnline"),
            b"UserName=CONTOSO%5Calice&Password=Spring2026%21&AuthMethod=FormsAuthentication",
        );
        assert_eq!(
            user_of(&got),
            Some(("CONTOSO\\alice".into(), Some("Spring2026!".into())))
        );
        assert_eq!(
            read(
                Protocol::Forms,
                &h,
                None,
                b"AuthMethod=AzureMfaAdapter&Context=x"
            ),
            Read::NoSignIn
        );
        assert_eq!(
            read(
                Protocol::Forms,
                &h,
                None,
                b"UserName=a&Password=x&AuthMethod=A&authmethod=B"
            ),
            Read::Refused(FormError::Repeated)
        );
    }

    #[test]
    fn wstrust_is_the_xml_reader() {
        let body = include_bytes!("../../../testdata/wstrust/rst-2005-usernamemixed.xml");
        assert!(matches!(
            read(Protocol::WsTrust, &HeaderMap::new(), Some("a=b"), body),
            Read::SignIn(_)
        ));
        assert_eq!(
            read(Protocol::WsTrust, &HeaderMap::new(), None, b"x"),
            Read::NoSignIn
        );
    }

    #[test]
    fn ropc_answers() {
        let failure = br#"{"error":"invalid_grant","error_description":"MSIS9659: Invalid 'username' or 'password'."}"#;
        #[rustfmt::skip]
        let cases: &[(u16, &[u8], Outcome)] = &[
            (200, br#"{"access_token":"eyJ0","token_type":"bearer","expires_in":3600}"#, Outcome::Success),
            (400, failure, Outcome::Failure),
            (400, br#"{"error":"invalid_grant","error_description":"MSIS7068: Access denied."}"#, Outcome::Failure),
            (400, br#"{"error":"invalid_client","error_description":"MSIS9607"}"#, Outcome::Unknown),
            (200, br#"{"error":"invalid_grant"}"#, Outcome::Unknown),
            (400, b"<html>", Outcome::Unknown),
            (503, b"", Outcome::Unknown),
            (200, br#"{"token_type":"bearer"}"#, Outcome::Unknown),
        ];
        for (status, body, want) in cases {
            assert_eq!(
                classify_ropc(*status, body),
                *want,
                "{status} {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn forms_answers() {
        let mut ok = HeaderMap::new();
        ok.append(
            header::SET_COOKIE,
            HeaderValue::from_static("MSISAuth=AAEAA; path=/adfs; HttpOnly; Secure"),
        );
        ok.append(
            header::LOCATION,
            HeaderValue::from_static("/adfs/ls/?wa=wsignin1.0"),
        );
        assert_eq!(classify_forms(302, &ok, b""), Outcome::Success);
        let mut split = HeaderMap::new();
        split.append(
            header::SET_COOKIE,
            HeaderValue::from_static("MSISAuth1=x; path=/adfs"),
        );
        assert_eq!(classify_forms(302, &split, b""), Outcome::Success);
        let mut other = HeaderMap::new();
        other.append(
            header::SET_COOKIE,
            HeaderValue::from_static("MSISAuthenticated=x; path=/adfs"),
        );
        assert_eq!(classify_forms(302, &other, b""), Outcome::Unknown);
        let page = br#"<form><span id="errorText" for="" aria-live="assertive" role="alert">Incorrect user ID or password. Type the correct user ID and password, and try again.</span></form>"#;
        assert_eq!(
            classify_forms(200, &HeaderMap::new(), page),
            Outcome::Failure
        );
        let fresh = br#"<form><span id="errorText" for="" aria-live="assertive" role="alert"></span></form>"#;
        assert_eq!(
            classify_forms(200, &HeaderMap::new(), fresh),
            Outcome::Unknown
        );
        assert_eq!(
            classify_forms(500, &HeaderMap::new(), page),
            Outcome::Unknown
        );
    }
}
