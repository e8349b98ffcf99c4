//! WS-Trust awareness: who is signing in, and what the STS answered.
//!
//! The corridor reads the username (and, for the lockout's keyed hash, the
//! password) from the request's `UsernameToken` and classifies the upstream
//! answer (success or failed sign-in) to teach the gate state; see
//! PRODUCT.md §4.4.
//!
//! All readers are pure functions over bytes the caller has already capped.
//! Elements are matched on namespace URI and local name, never on prefixes.
//! They stop at a DOCTYPE (no entity is ever expanded), past
//! [`MAX_DEPTH`] levels of nesting, after [`MAX_EVENTS`] parser events and
//! after [`MAX_NS_DECLS`] namespace declarations, so the cost stays linear in
//! the body whatever it holds. Anything unexpected means "unknown", never a
//! panic.
//!
//! [`username`] and [`credentials`] run on every filtered request, so they
//! are a hand-written single pass that allocates nothing unless the name
//! needs unescaping (then only the returned string). They follow quick-xml's
//! reader event for event: [`reference`] keeps the quick-xml implementation,
//! and the `wstrust_differential` fuzz target checks that both agree on every
//! input. [`classify_answer`] reads upstream answers with quick-xml.

use std::borrow::Cow;
use std::fmt;

use quick_xml::NsReader;
use quick_xml::events::{BytesRef, Event};
use quick_xml::name::{Namespace, QName, ResolveResult};

const SOAP12: &[u8] = b"http://www.w3.org/2003/05/soap-envelope";
const SOAP11: &[u8] = b"http://schemas.xmlsoap.org/soap/envelope/";
const WSSE: &[u8] =
    b"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
const TRUST_2005: &[u8] = b"http://schemas.xmlsoap.org/ws/2005/02/trust";
const TRUST_13: &[u8] = b"http://docs.oasis-open.org/ws-sx/ws-trust/200512";
/// The namespaces XML reserves: binding another prefix to them, or the `xml`
/// prefix to anything else, is an error (as in quick-xml).
const XML_NS: &[u8] = b"http://www.w3.org/XML/1998/namespace";
const XMLNS_NS: &[u8] = b"http://www.w3.org/2000/xmlns/";

/// The `Type` of a `wsse:Password` that holds the password itself.
pub const PASSWORD_TEXT: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText";

/// Deepest element nesting read; deeper documents are not WS-Trust messages.
pub const MAX_DEPTH: usize = 32;
/// Most parser events (tags, text pieces, references, comments) read.
pub const MAX_EVENTS: usize = 4096;
/// Most namespace declarations (`xmlns`, `xmlns:p`) read in one document.
pub const MAX_NS_DECLS: usize = 256;
/// Longest username kept, in bytes of UTF-8.
pub const MAX_USERNAME: usize = 512;
/// Longest password kept, in bytes of UTF-8 (AD passwords have at most 256
/// UTF-16 units).
pub const MAX_PASSWORD: usize = 1024;

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

/// The username and password of a WS-Trust request's `UsernameToken`.
///
/// Both borrow from the body unless they needed unescaping. `Debug` never
/// shows the password; nothing should log it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// Exactly what [`username`] returns for the same body.
    pub user: Cow<'a, str>,
    /// The text of `wsse:Password` in the same `UsernameToken`, XML escapes
    /// decoded and not trimmed (spaces can belong to a password). `None`
    /// when there is none, its `Type` is not [`PASSWORD_TEXT`] (a digest),
    /// there are several, it holds markup or an undecodable reference, or it
    /// is longer than [`MAX_PASSWORD`] bytes. An empty element is `Some("")`.
    pub password: Option<Cow<'a, str>>,
}

impl fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The username of a WS-Trust request: the text of
/// `Envelope/Header/Security/UsernameToken/Username` (SOAP 1.2 or 1.1, wsse
/// namespace), XML escapes decoded and surrounding whitespace trimmed.
/// Borrowed from `body` unless it needed unescaping.
///
/// `None` when the body is not UTF-8 or not such a message, holds a DOCTYPE,
/// breaks a limit, carries several usernames, or the name is empty or longer
/// than [`MAX_USERNAME`] bytes. Reading stops at the end of the SOAP header.
/// The password is not decoded.
pub fn username(body: &[u8]) -> Option<Cow<'_, str>> {
    scan(body, false).map(|found| found.user)
}

/// The username (as [`username`]) and, when the same `UsernameToken` holds
/// one as [`PASSWORD_TEXT`], the password, read in the same single pass.
/// `None` exactly when [`username`] is `None`.
pub fn credentials(body: &[u8]) -> Option<Credentials<'_>> {
    scan(body, true)
}

/// Which of the names the scan looks for an element is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Envelope,
    Header,
    Security,
    UsernameToken,
    Username,
    Password,
    Other,
}

/// Room for a whole name when text must be unescaped: one allocation.
const OWNED: usize = 64;

/// Text read from one element: borrowed while it is one piece.
enum Text<'a> {
    Empty,
    Borrowed(&'a str),
    Owned(String),
}

impl<'a> Text<'a> {
    fn push_str(&mut self, piece: &'a str) {
        match self {
            Text::Empty => *self = Text::Borrowed(piece),
            Text::Borrowed(first) => {
                let mut owned = String::with_capacity((first.len() + piece.len()).max(OWNED));
                owned.push_str(first);
                owned.push_str(piece);
                *self = Text::Owned(owned);
            }
            Text::Owned(owned) => owned.push_str(piece),
        }
    }

    fn push_char(&mut self, c: char) {
        match self {
            Text::Empty => {
                let mut owned = String::with_capacity(OWNED);
                owned.push(c);
                *self = Text::Owned(owned);
            }
            Text::Borrowed(first) => {
                let mut owned = String::with_capacity((first.len() + 4).max(OWNED));
                owned.push_str(first);
                owned.push(c);
                *self = Text::Owned(owned);
            }
            Text::Owned(owned) => owned.push(c),
        }
    }

    fn into_cow(self) -> Cow<'a, str> {
        match self {
            Text::Empty => Cow::Borrowed(""),
            Text::Borrowed(text) => Cow::Borrowed(text),
            Text::Owned(text) => Cow::Owned(text),
        }
    }

    /// The text without surrounding whitespace (as `str::trim`).
    fn into_trimmed(self) -> Cow<'a, str> {
        match self.into_cow() {
            Cow::Borrowed(text) => Cow::Borrowed(text.trim()),
            Cow::Owned(mut text) => {
                let end = text.trim_end().len();
                text.truncate(end);
                let start = text.len() - text.trim_start().len();
                text.drain(..start);
                Cow::Owned(text)
            }
        }
    }
}

/// Where the password stands in the scan.
enum Password<'a> {
    Unseen,
    /// Inside `wsse:Password`.
    Reading(Text<'a>),
    /// Read, in the `UsernameToken` of this number.
    Read(Cow<'a, str>, usize),
    /// Several, a digest, markup inside, undecodable or too long.
    Unusable,
}

/// The single pass behind [`username`] and [`credentials`]: the same
/// decisions, in the same order, as [`reference::credentials`].
fn scan(body: &[u8], want_password: bool) -> Option<Credentials<'_>> {
    let text = std::str::from_utf8(body).ok()?;
    // Offsets are kept in 32 bits; the caller caps bodies far below 4 GiB.
    u32::try_from(body.len()).ok()?;
    let mut xml = Lexer::new(text);
    // How many levels from the root match Envelope/Header/Security/UsernameToken.
    let mut chain = 0;
    let mut tokens = 0; // UsernameToken elements seen
    let mut user: Option<Text<'_>> = None; // Some while inside Username
    let mut found: Option<(Cow<'_, str>, usize)> = None;
    let mut password = Password::Unseen;
    loop {
        match xml.next()? {
            Token::Start { name, attributes } => {
                let depth = xml.depth();
                if user.is_some() {
                    return None; // markup inside Username: not a plain name
                }
                let on_chain = depth == chain + 1;
                let wanted = if on_chain && depth <= 5 {
                    xml.wanted(name)
                } else {
                    Wanted::Other
                };
                match (depth, wanted) {
                    (1, Wanted::Envelope) | (2, Wanted::Header) | (3, Wanted::Security) => {
                        chain = depth;
                    }
                    (1, _) | (2, _) => return None, // not SOAP, or Body before Header
                    (4, Wanted::UsernameToken) => {
                        chain = depth;
                        tokens += 1;
                    }
                    (5, Wanted::Username) => {
                        if found.is_some() {
                            return None; // two usernames: which one would ADFS use?
                        }
                        user = Some(Text::Empty);
                    }
                    (5, Wanted::Password) if want_password => {
                        password = match password {
                            Password::Unseen if is_password_text(attributes) => {
                                Password::Reading(Text::Empty)
                            }
                            _ => Password::Unusable,
                        };
                    }
                    _ => {
                        if let Password::Reading(_) = password {
                            password = Password::Unusable;
                        }
                    }
                }
            }
            Token::End => {
                let depth = xml.depth() + 1; // of the element just closed
                if let Some(text) = user.take() {
                    let name = text.into_trimmed();
                    if name.is_empty() || name.len() > MAX_USERNAME {
                        return None;
                    }
                    found = Some((name, tokens));
                } else if depth == 5 && matches!(password, Password::Reading(_)) {
                    if let Password::Reading(text) =
                        std::mem::replace(&mut password, Password::Unusable)
                    {
                        let text = text.into_cow();
                        if text.len() <= MAX_PASSWORD {
                            password = Password::Read(text, tokens);
                        }
                    }
                } else if depth == 2 {
                    // The end of the SOAP header: the body does not interest us.
                    let (user, token) = found?;
                    let password = match password {
                        Password::Read(password, read_in) if read_in == token => Some(password),
                        _ => None,
                    };
                    return Some(Credentials { user, password });
                } else if depth == 1 {
                    return None;
                }
                if depth == chain {
                    chain -= 1;
                }
            }
            Token::Text(piece) => {
                if let Some(text) = user.as_mut() {
                    text.push_str(piece);
                } else if let Password::Reading(text) = &mut password {
                    text.push_str(piece);
                }
            }
            Token::Reference(name) => {
                if let Some(text) = user.as_mut() {
                    text.push_char(reference_char(name)?);
                } else if let Password::Reading(text) = &mut password {
                    match reference_char(name) {
                        Some(c) => text.push_char(c),
                        None => password = Password::Unusable,
                    }
                }
            }
            Token::Other => {}
        }
    }
}

/// Whether a `wsse:Password` start tag holds the password as text: no `Type`
/// attribute, or every `Type` (compared raw) is [`PASSWORD_TEXT`].
/// Attributes are read as quick-xml reads them, up to the first malformed one.
fn is_password_text(attributes: &[u8]) -> bool {
    let mut at = 0;
    while let Some((key, value)) = next_attribute(attributes, &mut at) {
        if key == b"Type" && value != PASSWORD_TEXT.as_bytes() {
            return false;
        }
    }
    true
}

/// `&lt;`, `&gt;`, `&amp;`, `&apos;`, `&quot;`, `&#..;` and `&#x..;` (as
/// quick-xml resolves them: no sign, no NUL, no surrogate). `None` for any
/// other entity: none is ever expanded.
fn reference_char(name: &str) -> Option<char> {
    match name {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "apos" => Some('\''),
        "quot" => Some('"'),
        _ => {
            let number = name.strip_prefix('#')?;
            let (digits, radix) = match number.strip_prefix('x') {
                Some(hex) => (hex, 16),
                None => (number, 10),
            };
            if digits.starts_with(['+', '-']) {
                return None;
            }
            match u32::from_str_radix(digits, radix).ok()? {
                0 => None,
                code => char::from_u32(code),
            }
        }
    }
}

/// One piece of the document, as quick-xml's reader would report it with
/// `expand_empty_elements` (each is one event for [`MAX_EVENTS`]).
enum Token<'a> {
    /// A start tag (or the first half of `<a/>`): its qualified name and the
    /// raw attributes that follow the name.
    Start {
        name: &'a [u8],
        attributes: &'a [u8],
    },
    /// An end tag (or the second half of `<a/>`); its element is already
    /// closed when this is returned.
    End,
    /// Character data: a text run (up to `<` or `&`) or a CDATA section.
    Text(&'a str),
    /// A general reference `&name;`, without `&` and `;`.
    Reference(&'a str),
    /// A comment, processing instruction or XML declaration.
    Other,
}

/// The namespaces the scan tells apart.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ns {
    /// SOAP 1.2 or 1.1.
    Soap,
    Wsse,
    Other,
}

/// An in-scope namespace declaration.
#[derive(Clone, Copy)]
struct Binding {
    /// Where the prefix is in the body; `len == 0` for the default namespace
    /// (quick-xml also takes `xmlns:=".."` as one).
    prefix_at: u32,
    prefix_len: u32,
    /// An empty namespace (which unbinds) is `Other` too.
    ns: Ns,
    /// Depth of the declaring element.
    level: u8,
}

/// The tokenizer: quick-xml's `NsReader` over a `&str` (UTF-8 BOM skipped,
/// `expand_empty_elements`, end names checked, dangling `&` an error), with
/// the limits of [`Scanner`], in fixed-size arrays.
struct Lexer<'a> {
    text: &'a str,
    pos: usize,
    events: usize,
    /// A `<a/>` was returned as a start: its end comes next.
    empty_end: bool,
    /// Open elements' names, as (offset, length) in the body.
    open: [(u32, u32); MAX_DEPTH],
    depth: usize,
    bindings: [Binding; MAX_NS_DECLS],
    bound: usize,
    ns_decls: usize,
}

impl<'a> Lexer<'a> {
    /// A lexer over a body already checked to be UTF-8.
    fn new(text: &'a str) -> Self {
        let pos = if text.starts_with('\u{feff}') { 3 } else { 0 };
        Self {
            text,
            pos,
            events: 0,
            empty_end: false,
            open: [(0, 0); MAX_DEPTH],
            depth: 0,
            bindings: [Binding {
                prefix_at: 0,
                prefix_len: 0,
                ns: Ns::Other,
                level: 0,
            }; MAX_NS_DECLS],
            bound: 0,
            ns_decls: 0,
        }
    }

    fn depth(&self) -> usize {
        self.depth
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// The next token; `None` at the end of the input, on a syntax error, a
    /// DOCTYPE or a broken limit.
    fn next(&mut self) -> Option<Token<'a>> {
        self.events += 1;
        if self.events > MAX_EVENTS {
            return None;
        }
        if std::mem::take(&mut self.empty_end) {
            self.close();
            return Some(Token::End);
        }
        let bytes = self.bytes();
        let at = self.pos;
        match *bytes.get(at)? {
            b'<' => self.markup(at + 1),
            b'&' => {
                // Up to `;`; a `&` or `<` first, or the end, is an error.
                let len = find(&bytes[at + 1..], [b';', b'&', b'<'])?;
                if bytes[at + 1 + len] != b';' {
                    return None;
                }
                self.pos = at + len + 2;
                Some(Token::Reference(&self.text[at + 1..at + 1 + len]))
            }
            _ => {
                // Text up to markup or a reference; text up to the end of
                // the input is followed by nothing but the end.
                let len = find(&bytes[at..], [b'<', b'&'])?;
                self.pos = at + len;
                Some(Token::Text(&self.text[at..at + len]))
            }
        }
    }

    /// The markup after the `<` at `at - 1`.
    fn markup(&mut self, at: usize) -> Option<Token<'a>> {
        let bytes = self.bytes();
        let rest = &bytes[at..];
        match *rest.first()? {
            b'!' => match *rest.get(1)? {
                b'-' => {
                    // A comment needs at least `!---->` and must open `!--`.
                    let mut from = 0;
                    loop {
                        let gt = from + find(&rest[from..], [b'>'])?;
                        if gt > 4 && rest[..gt].ends_with(b"--") {
                            if !rest.starts_with(b"!--") {
                                return None;
                            }
                            self.pos = at + gt + 1;
                            return Some(Token::Other);
                        }
                        from = gt + 1;
                    }
                }
                b'[' => {
                    let mut from = 0;
                    loop {
                        let gt = from + find(&rest[from..], [b'>'])?;
                        if rest[..gt].ends_with(b"]]") {
                            if !rest.starts_with(b"![CDATA[") {
                                return None;
                            }
                            self.pos = at + gt + 1;
                            return Some(Token::Text(&self.text[at + 8..at + gt - 2]));
                        }
                        from = gt + 1;
                    }
                }
                // `<!DOCTYPE` (any case) or anything else: stop.
                _ => None,
            },
            b'?' => {
                // Up to `?>`; `<?>` is an error.
                let mut from = 1;
                loop {
                    let gt = from + find(&rest[from..], [b'>'])?;
                    if rest[gt - 1] == b'?' {
                        if gt < 2 {
                            return None;
                        }
                        self.pos = at + gt + 1;
                        return Some(Token::Other);
                    }
                    from = gt + 1;
                }
            }
            b'/' => {
                let gt = tag_end(rest)?;
                self.pos = at + gt + 1;
                let content = &rest[1..gt];
                let name = match content.iter().rposition(|&b| !is_space(b)) {
                    Some(last) => &content[..last + 1],
                    None => content,
                };
                let (open_at, open_len) = *self.open[..self.depth].last()?;
                let open_at = open_at as usize;
                if name != &bytes[open_at..open_at + open_len as usize] {
                    return None;
                }
                self.close();
                Some(Token::End)
            }
            _ => {
                let gt = tag_end(rest)?;
                self.pos = at + gt + 1;
                let mut content = &rest[..gt];
                if let Some(inner) = content.strip_suffix(b"/") {
                    content = inner;
                    self.empty_end = true;
                }
                let name_len = content
                    .iter()
                    .position(|&b| is_space(b))
                    .unwrap_or(content.len());
                let (name, attributes) = content.split_at(name_len);
                self.open(at, name, attributes)?;
                Some(Token::Start { name, attributes })
            }
        }
    }

    /// Opens an element: depth limit, then its namespace declarations.
    fn open(&mut self, at: usize, name: &[u8], attributes: &'a [u8]) -> Option<()> {
        if self.depth == MAX_DEPTH {
            return None;
        }
        self.open[self.depth] = (at as u32, name.len() as u32);
        self.depth += 1;
        // Reading attributes has no effect but declarations: without an
        // `xmlns` in the text there is none.
        if !contains_xmlns(attributes) {
            return Some(());
        }
        let mut cursor = 0;
        while let Some((key, value)) = next_attribute(attributes, &mut cursor) {
            let Some(prefix) = key.strip_prefix(b"xmlns") else {
                continue;
            };
            let prefix = match prefix {
                [] => &[][..],
                [b':', prefix @ ..] => prefix,
                _ => continue, // `xmlnsfoo` is an ordinary attribute
            };
            self.ns_decls += 1;
            if self.ns_decls > MAX_NS_DECLS {
                return None;
            }
            let declares_prefix = key.len() > 5;
            if declares_prefix {
                match prefix {
                    b"xml" if value != XML_NS => return None,
                    b"xml" => continue, // already bound so
                    b"xmlns" => return None,
                    _ if value == XML_NS || value == XMLNS_NS => return None,
                    _ => {}
                }
            }
            // `key` lies in the body: its prefix starts after `xmlns:`.
            let prefix_at = if declares_prefix {
                key.as_ptr() as usize - self.bytes().as_ptr() as usize + 6
            } else {
                0
            };
            self.bindings[self.bound] = Binding {
                prefix_at: prefix_at as u32,
                prefix_len: prefix.len() as u32,
                ns: match value {
                    SOAP12 | SOAP11 => Ns::Soap,
                    WSSE => Ns::Wsse,
                    _ => Ns::Other,
                },
                level: self.depth as u8,
            };
            self.bound += 1;
        }
        Some(())
    }

    /// Closes the innermost element and its namespace declarations.
    fn close(&mut self) {
        self.depth -= 1;
        while self.bound > 0 && self.bindings[self.bound - 1].level as usize > self.depth {
            self.bound -= 1;
        }
    }

    /// What an element name in the current scope is, resolved as quick-xml
    /// does: the nearest declaration of its prefix (or of the default
    /// namespace when it has none); an empty namespace unbinds.
    fn wanted(&self, name: &[u8]) -> Wanted {
        let bytes = self.bytes();
        let (prefix, local) = match name.iter().position(|&b| b == b':') {
            Some(colon) => (Some(&name[..colon]), &name[colon + 1..]),
            None => (None, name),
        };
        let binding = self.bindings[..self.bound]
            .iter()
            .rev()
            .find(|b| match prefix {
                None => b.prefix_len == 0,
                Some(prefix) => {
                    let at = b.prefix_at as usize;
                    b.prefix_len > 0 && &bytes[at..at + b.prefix_len as usize] == prefix
                }
            });
        match (binding.map_or(Ns::Other, |b| b.ns), local) {
            (Ns::Soap, b"Envelope") => Wanted::Envelope,
            (Ns::Soap, b"Header") => Wanted::Header,
            (Ns::Wsse, b"Security") => Wanted::Security,
            (Ns::Wsse, b"UsernameToken") => Wanted::UsernameToken,
            (Ns::Wsse, b"Username") => Wanted::Username,
            (Ns::Wsse, b"Password") => Wanted::Password,
            _ => Wanted::Other,
        }
    }
}

/// Whether `text` holds `xmlns` anywhere.
fn contains_xmlns(text: &[u8]) -> bool {
    let mut from = 0;
    while let Some(x) = find(&text[from..], [b'x']) {
        if text[from + x..].starts_with(b"xmlns") {
            return true;
        }
        from += x + 1;
    }
    false
}

/// XML whitespace as quick-xml counts it.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\r' | b'\n' | b'\t')
}

/// The `>` that ends a tag whose content starts `tag`, outside quotes.
fn tag_end(tag: &[u8]) -> Option<usize> {
    let mut quote = None;
    let mut from = 0;
    loop {
        let at = from + find(&tag[from..], [b'>', b'\'', b'"'])?;
        match (quote, tag[at]) {
            (None, b'>') => return Some(at),
            (None, q) => quote = Some(q),
            (Some(q), b) if q == b => quote = None,
            _ => {}
        }
        from = at + 1;
    }
}

/// The next `key="value"` (or `'value'`) from `*at` in a tag's attribute
/// text, as quick-xml's attribute iterator reads it without duplicate
/// checks; `None` at the end or at the first malformed attribute.
fn next_attribute<'t>(text: &'t [u8], at: &mut usize) -> Option<(&'t [u8], &'t [u8])> {
    let mut i = *at;
    while i < text.len() && is_space(text[i]) {
        i += 1;
    }
    let key_start = i;
    i += 1; // the key's first byte may be anything but a space
    while i < text.len() && text[i] != b'=' && !is_space(text[i]) {
        i += 1;
    }
    let key_end = i;
    if *text.get(i)? != b'=' {
        i += 1;
        while i < text.len() && is_space(text[i]) {
            i += 1;
        }
        if *text.get(i)? != b'=' {
            return None;
        }
    }
    i += 1;
    while i < text.len() && is_space(text[i]) {
        i += 1;
    }
    let quote = *text.get(i)?;
    if quote != b'"' && quote != b'\'' {
        return None;
    }
    let value_start = i + 1;
    let value_end = value_start + find(&text[value_start..], [quote])?;
    *at = value_end + 1;
    Some((&text[key_start..key_end], &text[value_start..value_end]))
}

/// The first position of any of `needles` in `haystack`, eight bytes at a
/// time.
#[inline]
fn find<const N: usize>(haystack: &[u8], needles: [u8; N]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut chunks = haystack.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]);
        let mut hits = 0;
        for needle in needles {
            // Marks the zero bytes of `word ^ needle`; the lowest mark is exact.
            let x = word ^ (ONES * u64::from(needle));
            hits |= x.wrapping_sub(ONES) & !x & HIGHS;
        }
        if hits != 0 {
            return Some(offset + (hits.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|b| needles.contains(b))
        .map(|p| offset + p)
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

/// The quick-xml implementation of [`username`] and [`credentials`]: the
/// reference the single-pass scan is fuzzed against (`fuzz/`, target
/// `wstrust_differential`) and benchmarked against (`benches/`). Same
/// results, several times slower, about 15 allocations a call. Not for the
/// request path.
#[doc(hidden)]
pub mod reference {
    use super::*;

    /// [`super::username`], read with quick-xml's `NsReader`.
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

    /// [`super::credentials`], read with quick-xml's `NsReader`.
    pub fn credentials(body: &[u8]) -> Option<Credentials<'static>> {
        use Elem::*;
        const TOKEN: &[Elem] = &[Envelope, Header, Security, UsernameToken];
        const USERNAME: &[Elem] = &[Envelope, Header, Security, UsernameToken, Username];
        const PASSWORD: &[Elem] = &[Envelope, Header, Security, UsernameToken, Password];
        enum Pw {
            Unseen,
            Reading(String),
            Read(String, usize),
            Unusable,
        }
        let mut xml = Scanner::new(body)?;
        let mut tokens = 0;
        let mut reading: Option<String> = None; // Some while inside Username
        let mut found: Option<(String, usize)> = None;
        let mut password = Pw::Unseen;
        loop {
            let event = xml.next()?;
            match (&event, xml.path()) {
                (Event::Start(_), [root]) if *root != Envelope => return None,
                (Event::Start(_), [Envelope, child]) if *child != Header => return None,
                (Event::Start(_), path) if path == TOKEN => tokens += 1,
                (Event::Start(_), path) if path == USERNAME => {
                    if found.is_some() {
                        return None;
                    }
                    reading = Some(String::new());
                }
                (Event::Start(start), path) if path == PASSWORD => {
                    let text_type = start
                        .attributes()
                        .with_checks(false)
                        .map_while(Result::ok)
                        .all(|a| {
                            a.key.as_ref() != b"Type" || &*a.value == PASSWORD_TEXT.as_bytes()
                        });
                    password = match password {
                        Pw::Unseen if text_type => Pw::Reading(String::new()),
                        _ => Pw::Unusable,
                    };
                }
                (Event::Start(_), _) if reading.is_some() => return None,
                (Event::Start(_), _) => {
                    if let Pw::Reading(_) = password {
                        password = Pw::Unusable;
                    }
                }
                (Event::End(_), path) if path == USERNAME => {
                    let name = reading.take()?;
                    let name = name.trim();
                    if name.is_empty() || name.len() > MAX_USERNAME {
                        return None;
                    }
                    found = Some((name.to_owned(), tokens));
                }
                (Event::End(_), path) if path == PASSWORD => {
                    password = match password {
                        Pw::Reading(text) if text.len() <= MAX_PASSWORD => Pw::Read(text, tokens),
                        _ => Pw::Unusable,
                    };
                }
                (Event::End(_), [Envelope, Header]) => {
                    let (user, token) = found?;
                    let password = match password {
                        Pw::Read(text, read_in) if read_in == token => Some(Cow::Owned(text)),
                        _ => None,
                    };
                    return Some(Credentials {
                        user: Cow::Owned(user),
                        password,
                    });
                }
                _ => {
                    if let Some(text) = reading.as_mut() {
                        append_text(text, &event)?;
                    } else if let Pw::Reading(text) = &mut password {
                        if append_text(text, &event).is_none() {
                            password = Pw::Unusable;
                        }
                    }
                }
            }
        }
    }
}

/// The elements the quick-xml readers look for; everything else is `Other`.
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
    Password,
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
            (WSSE, b"Password") => Elem::Password,
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

    const RST_2005: &[u8] = include_bytes!("../../../testdata/wstrust/rst-2005-usernamemixed.xml");
    const RST_13: &[u8] = include_bytes!("../../../testdata/wstrust/rst-13-usernamemixed.xml");
    const RSTR_2005: &[u8] = include_bytes!("../../../testdata/wstrust/rstr-2005-success.xml");
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
        let body = body.as_ref();
        let fast = username(body).map(Cow::into_owned);
        assert_eq!(
            fast,
            reference::username(body),
            "{}",
            String::from_utf8_lossy(body)
        );
        fast
    }

    /// The fast scan and the quick-xml reference agree on `body`.
    fn agree(body: &[u8]) {
        let text = String::from_utf8_lossy(body);
        let fast = username(body);
        assert_eq!(
            fast.as_deref(),
            reference::username(body).as_deref(),
            "{text}"
        );
        let both = credentials(body);
        assert_eq!(both, reference::credentials(body), "{text}");
        assert_eq!(both.map(|c| c.user), fast, "{text}");
    }

    /// A little xorshift generator, seeded: the same cases every run.
    fn random(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
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

        let mut random = random(0x2545_f491_4f6c_dd1d);
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

    fn password_of(body: impl AsRef<[u8]>) -> Option<String> {
        let body = body.as_ref();
        agree(body);
        credentials(body)?.password.map(Cow::into_owned)
    }

    #[test]
    fn credentials_of_fixtures() {
        let c = credentials(RST_2005).unwrap();
        assert_eq!(c.user, "d'arcy@contoso.com");
        assert_eq!(c.password.as_deref(), Some("correct horse & battery"));
        let c = credentials(RST_13).unwrap();
        assert_eq!(c.user, "CONTOSO\\alice");
        assert_eq!(c.password.as_deref(), Some("Summer2026!"));
        // Plain text is borrowed from the body: no allocation.
        assert!(matches!(c.user, Cow::Borrowed(_)));
        assert!(matches!(c.password, Some(Cow::Borrowed(_))));
        assert!(matches!(username(RST_13), Some(Cow::Borrowed(_))));
        // Debug never shows the password.
        let shown = format!("{c:?}");
        assert!(
            shown.contains("alice") && !shown.contains("Summer"),
            "{shown}"
        );
        for fixture in [RSTR_2005, FAULT_FAILED_AUTH, FAULT_REQUEST_FAILED] {
            assert_eq!(credentials(fixture), None);
        }
    }

    #[test]
    fn password_shapes() {
        let with = |password: &str| {
            envelope(&format!(
                "<o:Security><o:UsernameToken><o:Username>bob</o:Username>{password}\
                 </o:UsernameToken></o:Security>"
            ))
        };
        let text_type = format!("Type='{PASSWORD_TEXT}'");
        let cases = [
            ("<o:Password>s3cret</o:Password>", Some(" s3cret")),
            ("<o:Password> s3 cret </o:Password>", Some("  s3 cret ")),
            ("<o:Password/>", Some(" ")),
            (
                "<o:Password>a&amp;b&#x21;<![CDATA[<c>]]></o:Password>",
                Some(" a&b!<c>"),
            ),
            ("<o:Password>a<!-- x -->b</o:Password>", Some(" ab")),
            (
                &*format!("<o:Password {text_type}>pw</o:Password>"),
                Some(" pw"),
            ),
            ("<o:Password Type='#PasswordDigest'>pw</o:Password>", None),
            (
                &*format!("<o:Password {text_type} Type='#PasswordDigest'>pw</o:Password>"),
                None,
            ),
            (
                "<o:Password>pw</o:Password><o:Password>pw</o:Password>",
                None,
            ),
            ("<o:Password>p<b/>w</o:Password>", None),
            ("<o:Password>p&bogus;w</o:Password>", None),
            ("<Password>pw</Password>", None), // unqualified: not wsse
            (
                &*format!("<o:Password>{}</o:Password>", "p".repeat(MAX_PASSWORD)),
                Some("max"),
            ),
            (
                &*format!("<o:Password>{}</o:Password>", "p".repeat(MAX_PASSWORD + 1)),
                None,
            ),
        ];
        for (password, expected) in cases {
            let body = with(password);
            let got = password_of(&body);
            let expected = match expected {
                Some("max") => Some("p".repeat(MAX_PASSWORD)),
                other => other.map(|p| p[1..].to_string()),
            };
            assert_eq!(got, expected, "{password}");
            // A bad password never costs the username.
            assert_eq!(user(&body).as_deref(), Some("bob"), "{password}");
        }
        // The password must sit in the username's UsernameToken.
        let apart = envelope(
            "<o:Security><o:UsernameToken><o:Username>bob</o:Username></o:UsernameToken>\
             <o:UsernameToken><o:Password>pw</o:Password></o:UsernameToken></o:Security>",
        );
        assert_eq!(password_of(&apart), None);
        let before = envelope(
            "<o:Security><o:UsernameToken><o:Password>pw</o:Password>\
             <o:Username>bob</o:Username></o:UsernameToken></o:Security>",
        );
        assert_eq!(password_of(&before).as_deref(), Some("pw"));
        // No username, no credentials, whatever the password.
        let alone = envelope(
            "<o:Security><o:UsernameToken><o:Password>pw</o:Password></o:UsernameToken></o:Security>",
        );
        assert_eq!(credentials(alone.as_bytes()), None);
    }

    /// Shapes at the edges of quick-xml's grammar: the scan must read each
    /// exactly as the reference does.
    #[test]
    fn agrees_with_reference_on_edges() {
        let base = token("bob");
        let edits: &[(&str, &str)] = &[
            (
                "<s:Header>",
                "<s:Header><?pi x?><!-- c --><![CDATA[x]]>&amp;&#x41;",
            ),
            ("<s:Header>", "<s:Header><?>"),
            ("<s:Header>", "<s:Header><??>"),
            ("<s:Header>", "<s:Header><!-->-->"),
            ("<s:Header>", "<s:Header><!--->"),
            ("<s:Header>", "<s:Header><!---->"),
            ("<s:Header>", "<s:Header><!-x-->"),
            ("<s:Header>", "<s:Header><![CDAT[x]]>"),
            ("<s:Header>", "<s:Header><![]]>"),
            ("<s:Header>", "<s:Header><!x>"),
            ("<s:Header>", "<s:Header><!doctype x>"),
            ("<s:Header>", "<s:Header>< />"),
            ("<s:Header>", "<s:Header><></>"),
            ("<s:Header>", "<s:Header><a b='>' c=\"'\"/>"),
            ("<s:Header>", "<s:Header><a></a >"),
            ("<s:Header>", "<s:Header><a></a x>"),
            ("<s:Header>", "<s:Header><a/ >"),
            ("<s:Header>", "<s:Header>&;"),
            ("<s:Header>", "<s:Header>& x;"),
            ("<s:Header>", "<s:Header>&x"),
            ("<s:Header>", "<s:Header>&x&y;"),
            (
                "<s:Header>",
                "<s:Header xmlns:xml='http://www.w3.org/XML/1998/namespace'>",
            ),
            ("<s:Header>", "<s:Header xmlns:xml='urn:x'>"),
            ("<s:Header>", "<s:Header xmlns:xmlns='urn:x'>"),
            (
                "<s:Header>",
                "<s:Header xmlns:p='http://www.w3.org/2000/xmlns/'>",
            ),
            ("<s:Header>", "<s:Header xmlns:='urn:x'>"),
            ("<s:Header>", "<s:Header xmlnsx='urn:x'>"),
            ("<s:Header>", "<s:Header a b='1' xmlns:o='urn:x'>"),
            ("<s:Header>", "<s:Header a xmlns:o='urn:x'>"),
            ("<s:Header>", "<s:Header a=b xmlns:o='urn:x'>"),
            ("<s:Header>", "<s:Header =='' xmlns:o='urn:x'>"),
            ("<s:Header>", "<s:Header a = '' xmlns:o = 'urn:x' >"),
            ("<s:Header>", "<s:Header xmlns:o=''>"),
            ("<o:Security>", "<o:Security xmlns:o=''>"),
            ("<o:Security>", "<o:Security xmlns:o='urn:x'>"),
            ("<o:Username>", "<o:Username xmlns:o='urn:x'>"),
            (
                "<o:Username>",
                "<Username xmlns='http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd'>",
            ),
            ("</o:Username>", "</Username>"),
            ("<o:Security>", "<o:Security xmlns=''>"),
            ("<s:Envelope", "\u{feff}<s:Envelope"),
            ("<s:Envelope", "\u{feff}\u{feff}<s:Envelope"),
            ("<s:Envelope", "text&amp;<?xml version='1.0'?><s:Envelope"),
            ("<s:Envelope", "</x><s:Envelope"),
            ("bob", "\u{a0}bob\u{2003}"),
            ("bob", "&#x20;bob&#32;"),
            ("bob", "&#+66;ob"),
            ("bob", "&#X62;ob"),
            ("bob", "&#x;ob"),
            ("bob", "&#1114112;ob"),
            ("bob", "b\r\nob"),
            ("bob", "<![CDATA[]]>bob"),
            ("bob", "<?pi?>bob"),
            ("</s:Header>", "</s:Header >"),
            ("</s:Header>", "</s:Header\t\n>"),
            ("</s:Header>", "<s:Header/></s:Header>"),
            ("<s:Body/>", "<s:Body>\u{ff}"),
        ];
        for (from, to) in edits {
            agree(base.replacen(from, to, 1).as_bytes());
        }
        agree(b"\xef\xbb\xbf");
        agree(&[0xef, 0xbb, 0xbf, b'<']);
    }

    /// Random edits of every request shape: the scan and the reference give
    /// the same username and password.
    #[test]
    fn agrees_with_reference_on_mutations() {
        let mut random = random(0x9e37_79b9_7f4a_7c15);
        let alphabet = b"<>/&;:'\"= ax!?-[]#\r\n";
        let fixtures = [
            RST_2005.to_vec(),
            RST_13.to_vec(),
            token("b&#111;b").into_bytes(),
            envelope(
                "<o:Security><o:UsernameToken><o:Password Type='x'>p</o:Password>\
                 <o:Username>bob</o:Username></o:UsernameToken></o:Security>",
            )
            .into_bytes(),
        ];
        for fixture in &fixtures {
            for _ in 0..4000 {
                let mut body = fixture.clone();
                for _ in 0..1 + random() % 3 {
                    let at = (random() % body.len() as u64) as usize;
                    let byte = alphabet[(random() % alphabet.len() as u64) as usize];
                    match random() % 3 {
                        0 => body[at] = byte,
                        1 => {
                            body.remove(at);
                        }
                        _ => body.insert(at, byte),
                    }
                }
                agree(&body);
            }
            for end in 0..fixture.len() {
                agree(&fixture[..end]);
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
