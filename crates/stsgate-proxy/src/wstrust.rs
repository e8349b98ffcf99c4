//! WS-Trust awareness: who is signing in, and what the STS answered.
//!
//! The corridor reads the username from the request's `UsernameToken` (a fact
//! for lockout and dynamic user blocks) and classifies the upstream answer
//! (success or failed sign-in) to teach the gate state; see PRODUCT.md §4.4.
//!
//! Both readers are pure functions over bytes the caller has already capped.
//! Elements are matched on namespace URI and local name, never on prefixes.
//! They stop at a DOCTYPE (no entity is ever expanded), past
//! [`MAX_DEPTH`] levels of nesting, after [`MAX_EVENTS`] parser events and
//! after [`MAX_NS_DECLS`] namespace declarations (which keeps prefix lookups
//! cheap), so the cost stays linear in the body whatever it holds. Anything
//! unexpected means "unknown", never a panic. The password is never decoded.

use quick_xml::NsReader;
use quick_xml::events::{BytesRef, Event};
use quick_xml::name::{Namespace, QName, ResolveResult};

const SOAP12: &[u8] = b"http://www.w3.org/2003/05/soap-envelope";
const SOAP11: &[u8] = b"http://schemas.xmlsoap.org/soap/envelope/";
const WSSE: &[u8] =
    b"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
const TRUST_2005: &[u8] = b"http://schemas.xmlsoap.org/ws/2005/02/trust";
const TRUST_13: &[u8] = b"http://docs.oasis-open.org/ws-sx/ws-trust/200512";

/// Deepest element nesting read; deeper documents are not WS-Trust messages.
pub const MAX_DEPTH: usize = 32;
/// Most parser events (tags, text pieces, references, comments) read.
pub const MAX_EVENTS: usize = 4096;
/// Most namespace declarations (`xmlns`, `xmlns:p`) read in one document.
pub const MAX_NS_DECLS: usize = 256;
/// Longest username kept, in bytes of UTF-8.
pub const MAX_USERNAME: usize = 512;

/// What the STS answered to a sign-in, as far as the gate cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// HTTP 200 with a `RequestSecurityTokenResponse` (or its collection): a
    /// good sign-in.
    Success,
    /// A SOAP fault whose subcode is `FailedAuthentication`: wrong password,
    /// unknown user or policy denial.
    FailedAuthentication,
    /// Any other SOAP fault (`RequestFailed`, ...): not a sign-in outcome.
    OtherFault,
    /// Not recognisable as a WS-Trust answer (empty, HTML, 503, truncated...).
    Unknown,
}

/// The username of a WS-Trust request: the text of
/// `Envelope/Header/Security/UsernameToken/Username` (SOAP 1.2 or 1.1, wsse
/// namespace), XML escapes decoded and surrounding whitespace trimmed.
///
/// `None` when the body is not such a message, holds a DOCTYPE, breaks a
/// limit, carries several usernames, or the name is empty or longer than
/// [`MAX_USERNAME`] bytes. Reading stops at the end of the SOAP header.
pub fn username(body: &[u8]) -> Option<String> {
    use Elem::*;
    const USERNAME: &[Elem] = &[Envelope, Header, Security, UsernameToken, Username];
    let mut xml = Scanner::new(body)?;
    let mut reading: Option<String> = None; // Some while inside Username
    let mut found = None;
    loop {
        let event = xml.next()?;
        match (&event, xml.path()) {
            (Event::Start(_), [root]) if *root != Envelope => return None,
            // The header comes first; the body does not interest us.
            (Event::Start(_), [Envelope, child]) if *child != Header => return None,
            (Event::Start(_), path) if path == USERNAME => {
                if found.is_some() {
                    return None; // two usernames: which one would ADFS use?
                }
                reading = Some(String::new());
            }
            // Markup inside Username: not a plain name.
            (Event::Start(_), _) if reading.is_some() => return None,
            (Event::End(_), path) if path == USERNAME => {
                let name = reading.take()?;
                let name = name.trim();
                if name.is_empty() || name.len() > MAX_USERNAME {
                    return None;
                }
                found = Some(name.to_owned());
            }
            (Event::End(_), [Envelope, Header]) => return found,
            _ => {
                if let Some(text) = reading.as_mut() {
                    append_text(text, &event)?;
                }
            }
        }
    }
}

/// Classifies an upstream answer from its HTTP status and body.
///
/// [`Answer::Success`] needs status 200 and a `RequestSecurityTokenResponse`
/// or `RequestSecurityTokenResponseCollection` (WS-Trust 2005 or 1.3) as the
/// first element of the SOAP body. A fault is [`Answer::FailedAuthentication`]
/// when its `Code/Subcode/Value` (SOAP 1.2) or `faultcode` (SOAP 1.1) is a
/// QName with local part `FailedAuthentication`, whose prefix, when declared,
/// is bound to the wsse or a trust namespace; any other fault is
/// [`Answer::OtherFault`]. Everything else, including bodies that break the
/// limits, is [`Answer::Unknown`].
pub fn classify_answer(status: u16, body: &[u8]) -> Answer {
    read_answer(status, body).unwrap_or(Answer::Unknown)
}

fn read_answer(status: u16, body: &[u8]) -> Option<Answer> {
    use Elem::*;
    let mut xml = Scanner::new(body)?;
    let mut code: Option<String> = None; // Some while inside the fault code
    loop {
        let event = xml.next()?;
        match (&event, xml.path()) {
            (Event::Start(_), [root]) if *root != Envelope => return None,
            (Event::Start(_), [Envelope, Body, Rstr]) => {
                return (status == 200).then_some(Answer::Success);
            }
            (Event::Start(_), [Envelope, Body, first]) if *first != Fault => return None,
            (Event::Start(_), [Envelope, Body, Fault, Code, Subcode, Value])
            | (Event::Start(_), [Envelope, Body, Fault, FaultCode]) => code = Some(String::new()),
            (Event::Start(_), _) if code.is_some() => return Some(Answer::OtherFault),
            (Event::End(_), [Envelope, Body, Fault, Code, Subcode, Value])
            | (Event::End(_), [Envelope, Body, Fault, FaultCode]) => {
                let code = code.take()?;
                return Some(if xml.is_failed_authentication(code.trim()) {
                    Answer::FailedAuthentication
                } else {
                    Answer::OtherFault
                });
            }
            (Event::End(_), [Envelope, Body, Fault]) => return Some(Answer::OtherFault),
            _ => {
                if let Some(text) = code.as_mut() {
                    append_text(text, &event)?;
                }
            }
        }
    }
}

/// The elements the two readers look for; everything else is `Other`
/// (the Password element included: its content is never decoded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    Envelope,
    Header,
    Body,
    Fault,
    /// SOAP 1.2 `Fault/Code`, `Code/Subcode` and their `Value`s.
    Code,
    Subcode,
    Value,
    /// SOAP 1.1 `Fault/faultcode` (unqualified).
    FaultCode,
    Security,
    UsernameToken,
    Username,
    /// `RequestSecurityTokenResponse` or its collection, either trust version.
    Rstr,
    Other,
}

impl Elem {
    fn of(ns: ResolveResult<'_>, local: &[u8]) -> Elem {
        let ns = match ns {
            ResolveResult::Bound(Namespace(ns)) => ns,
            ResolveResult::Unbound => b"",
            ResolveResult::Unknown(_) => return Elem::Other,
        };
        match (ns, local) {
            (SOAP12 | SOAP11, b"Envelope") => Elem::Envelope,
            (SOAP12 | SOAP11, b"Header") => Elem::Header,
            (SOAP12 | SOAP11, b"Body") => Elem::Body,
            (SOAP12 | SOAP11, b"Fault") => Elem::Fault,
            (SOAP12, b"Code") => Elem::Code,
            (SOAP12, b"Subcode") => Elem::Subcode,
            (SOAP12, b"Value") => Elem::Value,
            (b"", b"faultcode") => Elem::FaultCode,
            (WSSE, b"Security") => Elem::Security,
            (WSSE, b"UsernameToken") => Elem::UsernameToken,
            (WSSE, b"Username") => Elem::Username,
            (
                TRUST_2005 | TRUST_13,
                b"RequestSecurityTokenResponse" | b"RequestSecurityTokenResponseCollection",
            ) => Elem::Rstr,
            _ => Elem::Other,
        }
    }
}

/// A namespace-aware pull parser that enforces the limits and keeps the path
/// of open elements.
struct Scanner<'a> {
    reader: NsReader<&'a [u8]>,
    path: Vec<Elem>,
    /// The last event closed `path`'s last element; pop it on the next read
    /// (the closed element stays in scope while its End event is handled).
    closing: bool,
    events: usize,
    ns_decls: usize,
}

impl<'a> Scanner<'a> {
    /// `None` when the body is not UTF-8.
    fn new(body: &'a [u8]) -> Option<Self> {
        let mut reader = NsReader::from_str(std::str::from_utf8(body).ok()?);
        // `<a/>` arrives as Start + End: one code path for both forms.
        reader.config_mut().expand_empty_elements = true;
        Some(Self {
            reader,
            path: Vec::with_capacity(MAX_DEPTH),
            closing: false,
            events: 0,
            ns_decls: 0,
        })
    }

    /// The next event, or `None` at the end of the root element or of the
    /// input, on a parse error, a DOCTYPE, or a broken limit.
    fn next(&mut self) -> Option<Event<'a>> {
        if std::mem::take(&mut self.closing) {
            self.path.pop();
            if self.path.is_empty() {
                return None; // the root element is closed: nothing follows
            }
        }
        self.events += 1;
        if self.events > MAX_EVENTS {
            return None;
        }
        let event = self.reader.read_event().ok()?;
        match &event {
            Event::Start(start) => {
                if self.path.len() == MAX_DEPTH {
                    return None;
                }
                // Count declarations before resolving, so a lookup never
                // walks more than MAX_NS_DECLS bindings. `with_checks(false)`:
                // the duplicate check is quadratic in the attribute count.
                self.ns_decls += start
                    .attributes()
                    .with_checks(false)
                    .map_while(Result::ok)
                    .filter(|a| a.key.as_namespace_binding().is_some())
                    .count();
                if self.ns_decls > MAX_NS_DECLS {
                    return None;
                }
                let (ns, local) = self.reader.resolve_element(start.name());
                self.path.push(Elem::of(ns, local.as_ref()));
            }
            Event::End(_) => self.closing = true,
            Event::DocType(_) | Event::Eof => return None,
            _ => {}
        }
        Some(event)
    }

    fn path(&self) -> &[Elem] {
        &self.path
    }

    /// Whether a fault code QName read in the current scope means
    /// `FailedAuthentication`. ADFS binds its prefix to the wsse namespace,
    /// or to the 2005 trust namespace for policy denials; an undeclared
    /// prefix is judged on the local part alone.
    fn is_failed_authentication(&self, qname: &str) -> bool {
        let (ns, local) = self.reader.resolve_element(QName(qname.as_bytes()));
        local.as_ref() == b"FailedAuthentication"
            && match ns {
                ResolveResult::Bound(Namespace(ns)) => matches!(ns, WSSE | TRUST_2005 | TRUST_13),
                ResolveResult::Unbound | ResolveResult::Unknown(_) => true,
            }
    }
}

/// Appends character data to `out`; other events add nothing. `None` for an
/// undecodable piece or an entity other than the five predefined ones.
fn append_text(out: &mut String, event: &Event<'_>) -> Option<()> {
    match event {
        Event::Text(text) => out.push_str(&text.decode().ok()?),
        Event::CData(cdata) => out.push_str(&cdata.decode().ok()?),
        Event::GeneralRef(reference) => out.push(resolve_reference(reference)?),
        _ => {}
    }
    Some(())
}

/// `&lt;`, `&gt;`, `&amp;`, `&apos;`, `&quot;`, `&#..;` and `&#x..;`.
fn resolve_reference(reference: &BytesRef<'_>) -> Option<char> {
    match &**reference {
        b"lt" => Some('<'),
        b"gt" => Some('>'),
        b"amp" => Some('&'),
        b"apos" => Some('\''),
        b"quot" => Some('"'),
        _ => reference.resolve_char_ref().ok().flatten(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const RST_2005: &[u8] =
        include_bytes!("../../../testdata/wstrust/rst-2005-usernamemixed.xml");
    const RST_13: &[u8] =
        include_bytes!("../../../testdata/wstrust/rst-13-usernamemixed.xml");
    const RSTR_2005: &[u8] =
        include_bytes!("../../../testdata/wstrust/rstr-2005-success.xml");
    const FAULT_FAILED_AUTH: &[u8] =
        include_bytes!("../../../testdata/wstrust/fault-failed-authentication.xml");
    const FAULT_ACCESS_DENIED: &[u8] =
        include_bytes!("../../../testdata/wstrust/fault-access-denied-2005.xml");
    const FAULT_REQUEST_FAILED: &[u8] =
        include_bytes!("../../../testdata/wstrust/fault-request-failed.xml");

    const PASSWORDS: &[&str] = &["correct horse", "battery", "Summer2026", "s3cret"];

    /// A SOAP 1.2 envelope with `header` as the content of its Header.
    fn envelope(header: &str) -> String {
        format!(
            "<s:Envelope xmlns:s='http://www.w3.org/2003/05/soap-envelope' \
             xmlns:o='http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd'>\
             <s:Header>{header}</s:Header><s:Body/></s:Envelope>"
        )
    }

    fn token(username: &str) -> String {
        envelope(&format!(
            "<o:Security><o:UsernameToken><o:Username>{username}</o:Username>\
             <o:Password>s3cret</o:Password></o:UsernameToken></o:Security>"
        ))
    }

    fn user(body: impl AsRef<[u8]>) -> Option<String> {
        username(body.as_ref())
    }

    #[test]
    fn fixtures() {
        assert_eq!(user(RST_2005).as_deref(), Some("d'arcy@contoso.com"));
        assert_eq!(user(RST_13).as_deref(), Some("CONTOSO\\alice"));
    }

    #[test]
    fn prefixes_do_not_matter() {
        let body = "<?xml version='1.0'?>\
            <soap:Envelope xmlns:soap='http://www.w3.org/2003/05/soap-envelope'>\
            <soap:Header><sec:Security xmlns:sec='http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd'>\
            <UsernameToken xmlns='http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd'>\
            <Username>\n  bob@contoso.com\t</Username><Password>s3cret</Password>\
            </UsernameToken></sec:Security></soap:Header><soap:Body/></soap:Envelope>";
        assert_eq!(user(body).as_deref(), Some("bob@contoso.com"));

        let soap11 = token("carol").replace(
            "http://www.w3.org/2003/05/soap-envelope",
            "http://schemas.xmlsoap.org/soap/envelope/",
        );
        assert_eq!(user(soap11).as_deref(), Some("carol"));
    }

    #[test]
    fn escapes_are_decoded() {
        let cases = [
            ("b&#111;b&#x40;contoso.com", Some("bob@contoso.com")),
            ("&lt;a&amp;b&gt;&quot;", Some("<a&b>\"")),
            ("<![CDATA[dave]]>@contoso.com", Some("dave@contoso.com")),
            ("a<!-- note -->b", Some("ab")),
            ("bob&unknown;", None),
            ("bob&#0;", None),
            ("bob&#xD800;", None),
            ("bob & co", None),
        ];
        for (raw, expected) in cases {
            assert_eq!(user(token(raw)).as_deref(), expected, "{raw}");
        }
    }

    #[test]
    fn wrong_place_or_namespace() {
        // Username directly under Security.
        let body = envelope("<o:Security><o:Username>bob</o:Username></o:Security>");
        assert_eq!(user(body), None);
        // The wsse prefix bound to another namespace.
        let body = token("bob").replace(
            "xmlns:o='http://docs.oasis",
            "xmlns:o='urn:x:http://docs.oasis",
        );
        assert_eq!(user(body), None);
        // Security outside the Header.
        let body = "<s:Envelope xmlns:s='http://www.w3.org/2003/05/soap-envelope' \
            xmlns:o='http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd'>\
            <s:Body><o:Security><o:UsernameToken><o:Username>bob</o:Username>\
            </o:UsernameToken></o:Security></s:Body></s:Envelope>";
        assert_eq!(user(body), None);
        // Not a SOAP envelope at the root.
        assert_eq!(user(format!("<wrap>{}</wrap>", token("bob"))), None);
        // An undeclared prefix.
        assert_eq!(user(token("bob").replace("xmlns:o=", "xmlns:p=")), None);
    }

    #[test]
    fn ambiguous_empty_or_long_names() {
        let two = envelope(
            "<o:Security><o:UsernameToken><o:Username>bob</o:Username><o:Username>eve</o:Username>\
             </o:UsernameToken></o:Security>",
        );
        assert_eq!(user(two), None);
        assert_eq!(user(token("")), None);
        assert_eq!(user(token("  \n ")), None);
        assert_eq!(
            user(envelope(
                "<o:Security><o:UsernameToken><o:Username/></o:UsernameToken></o:Security>"
            )),
            None
        );
        assert_eq!(user(token(&"a".repeat(512))).map(|n| n.len()), Some(512));
        assert_eq!(user(token(&"a".repeat(513))), None);
        assert_eq!(user(token("bob<b>x</b>")), None);
    }

    #[test]
    fn doctype_and_entities_are_refused() {
        let bomb = String::from_utf8_lossy(RST_2005)
            .replace("d&apos;arcy@contoso.com", "&lol9;")
            .replacen(
                "<s:Envelope",
                "<!DOCTYPE s:Envelope [<!ENTITY lol 'lol'>\
                 <!ENTITY lol1 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>\
                 <!ENTITY lol9 '&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;'>]><s:Envelope",
                1,
            );
        assert_eq!(user(&bomb), None);
        let external = format!("<!DOCTYPE x SYSTEM 'file:///etc/passwd'>{}", token("bob"));
        assert_eq!(user(external), None);
        let answer = format!("<!DOCTYPE x>{}", String::from_utf8_lossy(RSTR_2005));
        assert_eq!(classify_answer(200, answer.as_bytes()), Answer::Unknown);
    }

    #[test]
    fn limits() {
        let start = Instant::now();
        let deep = envelope(&format!(
            "{}{}",
            "<a>".repeat(10_000),
            "</a>".repeat(10_000)
        ));
        assert_eq!(user(&deep), None);
        assert_eq!(classify_answer(500, deep.as_bytes()), Answer::Unknown);

        // Nesting after the token: 32 levels are read, 33 are not.
        let nested = |levels: usize| {
            let tail = format!("{}{}", "<a>".repeat(levels - 2), "</a>".repeat(levels - 2));
            user(token("bob").replacen("</s:Header>", &format!("{tail}</s:Header>"), 1))
        };
        assert_eq!(nested(MAX_DEPTH).as_deref(), Some("bob"));
        assert_eq!(nested(MAX_DEPTH + 1), None);

        // Events before the token (`<x/>` is two events).
        let chatty = |count: usize| {
            user(token("bob").replacen(
                "<s:Header>",
                &format!("<s:Header>{}", "<x/>".repeat(count)),
                1,
            ))
        };
        assert_eq!(chatty(MAX_EVENTS / 2 - 20).as_deref(), Some("bob"));
        assert_eq!(chatty(MAX_EVENTS / 2), None);

        // Namespace declarations.
        let declared = |count: usize| {
            let decls: String = (0..count)
                .map(|i| format!(" xmlns:p{i}='urn:{i}'"))
                .collect();
            user(token("bob").replacen("<s:Header>", &format!("<s:Header{decls}>"), 1))
        };
        assert_eq!(declared(MAX_NS_DECLS - 2).as_deref(), Some("bob"));
        assert_eq!(declared(MAX_NS_DECLS - 1), None);
        assert_eq!(declared(100_000), None);

        // Many attributes (a quadratic duplicate check would take seconds).
        let attrs: String = (0..100_000).map(|i| format!(" a{i}='x'")).collect();
        let wide = token("bob").replacen("<s:Header>", &format!("<s:Header{attrs}>"), 1);
        assert_eq!(user(wide).as_deref(), Some("bob"));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn garbage_is_unknown() {
        let mut invalid = RST_2005.to_vec();
        let at = invalid.windows(6).position(|w| w == b"arcy@c").unwrap();
        invalid[at] = 0xff;
        for body in [
            &b""[..],
            b"   ",
            b"hello",
            b"<",
            b"<<<>>>",
            b"\xff\xfe<\0s\0>",
            b"{\"user\":\"bob\"}",
            b"<html><body>503</body></html>",
            &invalid,
        ] {
            assert_eq!(username(body), None);
            assert_eq!(classify_answer(200, body), Answer::Unknown);
        }
    }

    /// Every prefix of every fixture: no panic, never a wrong name.
    #[test]
    fn truncated_bodies() {
        for (fixture, name) in [(RST_2005, "d'arcy@contoso.com"), (RST_13, "CONTOSO\\alice")] {
            for end in 0..fixture.len() {
                let got = username(&fixture[..end]);
                assert!(
                    got.is_none() || got.as_deref() == Some(name),
                    "{end}: {got:?}"
                );
            }
        }
        for fixture in [
            RSTR_2005,
            FAULT_FAILED_AUTH,
            FAULT_ACCESS_DENIED,
            FAULT_REQUEST_FAILED,
        ] {
            for end in 0..fixture.len() {
                classify_answer(200, &fixture[..end]);
                classify_answer(500, &fixture[..end]);
            }
        }
    }

    /// Random byte edits of the requests: no panic, and the password never
    /// comes out.
    #[test]
    fn password_never_leaks() {
        let swapped = token("bob").replace(
            "<o:Username>bob</o:Username><o:Password>s3cret</o:Password>",
            "<o:Password>s3cret</o:Password><o:Username>bob</o:Username>",
        );
        assert_eq!(user(&swapped).as_deref(), Some("bob"));
        let unclosed = token("bob").replace("</o:Username>", "");
        assert_eq!(user(unclosed), None);
        let in_username = token("<o:Password>s3cret</o:Password>");
        assert_eq!(user(in_username), None);

        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for fixture in [RST_2005, RST_13, swapped.as_bytes()] {
            for _ in 0..3000 {
                let mut body = fixture.to_vec();
                for _ in 0..1 + random() % 4 {
                    let at = (random() % body.len() as u64) as usize;
                    match random() % 3 {
                        0 => body[at] = b"<>/&;:'\"= ax"[(random() % 12) as usize],
                        1 => {
                            body.remove(at);
                        }
                        _ => body.insert(at, b"<>/&;:'\"= ax"[(random() % 12) as usize]),
                    }
                }
                if let Some(name) = username(&body) {
                    for password in PASSWORDS {
                        assert!(!name.contains(password), "{name}");
                    }
                }
            }
        }
    }

    #[test]
    fn answers() {
        use Answer::*;
        assert_eq!(classify_answer(200, RSTR_2005), Success);
        assert_eq!(
            classify_answer(500, FAULT_FAILED_AUTH),
            FailedAuthentication
        );
        assert_eq!(
            classify_answer(500, FAULT_ACCESS_DENIED),
            FailedAuthentication
        );
        assert_eq!(classify_answer(500, FAULT_REQUEST_FAILED), OtherFault);
        assert_eq!(classify_answer(503, b""), Unknown);
        // A token response with an error status is not a success.
        assert_eq!(classify_answer(500, RSTR_2005), Unknown);
        // Requests are not answers.
        assert_eq!(classify_answer(200, RST_2005), Unknown);
    }

    #[test]
    fn answer_shapes() {
        use Answer::*;
        let s = "xmlns:s='http://www.w3.org/2003/05/soap-envelope'";
        let collection = format!(
            "<s:Envelope {s}><s:Body><trust:RequestSecurityTokenResponseCollection \
             xmlns:trust='http://docs.oasis-open.org/ws-sx/ws-trust/200512'/></s:Body></s:Envelope>"
        );
        assert_eq!(classify_answer(200, collection.as_bytes()), Success);
        let wrong_ns = collection.replace("ws-sx/ws-trust/200512", "ws-sx/ws-trust/other");
        assert_eq!(classify_answer(200, wrong_ns.as_bytes()), Unknown);

        let fault = |code: &str| {
            format!(
                "<s:Envelope {s}><s:Body><s:Fault><s:Code><s:Value>s:Sender</s:Value>\
                 <s:Subcode><s:Value>{code}</s:Value></s:Subcode></s:Code></s:Fault></s:Body></s:Envelope>"
            )
        };
        let cases = [
            ("a:FailedAuthentication", FailedAuthentication), // undeclared prefix: local part
            (" FailedAuthentication ", FailedAuthentication),
            ("s:FailedAuthentication", OtherFault), // bound to the SOAP namespace
            ("a:RequestFailed", OtherFault),
            ("", OtherFault),
            ("Failed&unknown;", Unknown),
        ];
        for (code, expected) in cases {
            assert_eq!(
                classify_answer(500, fault(code).as_bytes()),
                expected,
                "{code}"
            );
        }
        let bare = format!("<s:Envelope {s}><s:Body><s:Fault/></s:Body></s:Envelope>");
        assert_eq!(classify_answer(500, bare.as_bytes()), OtherFault);

        let soap11 = "<e:Envelope xmlns:e='http://schemas.xmlsoap.org/soap/envelope/'><e:Body><e:Fault>\
            <faultcode xmlns:w='http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd'>\
            w:FailedAuthentication</faultcode><faultstring>no</faultstring></e:Fault></e:Body></e:Envelope>";
        assert_eq!(
            classify_answer(500, soap11.as_bytes()),
            FailedAuthentication
        );
    }
}
