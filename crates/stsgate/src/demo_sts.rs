//! A loopback "demo STS" that answers like ADFS, for `stsgate demo` and tests.
//!
//! `POST /adfs/services/trust/...` with a `UsernameToken` whose password is
//! `demo` gets HTTP 200 and a token response (WS-Trust 1.3 collection on
//! `/13/` paths, WS-Trust 2005 otherwise); any other request to those paths
//! gets HTTP 500 and the `FailedAuthentication` fault ADFS sends for a wrong
//! password. `GET /adfs/services/trust/mex` returns placeholder metadata and
//! every other request a short text. The OAuth2 token endpoint
//! (`/adfs/oauth2/token`, `grant_type=password`) and the forms sign-in page
//! (`/adfs/ls/`) answer like ADFS too: a token or `invalid_grant`; a 302
//! setting `MSISAuth` or the page again with its error; and
//! `GET /adfs/.well-known/openid-configuration` names the token endpoint for
//! MSAL. Each answer carries `X-Demo-Sts: 1`, so
//! tests can tell that an answer came from upstream and not from the gate.
//! The token is unsigned: nothing downstream should ever trust it.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::{Namespace, ResolveResult};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The password the demo STS accepts, for every user.
pub const DEMO_PASSWORD: &str = "demo";

const TRUST_PATH: &str = "/adfs/services/trust/";
const MEX_PATH: &str = "/adfs/services/trust/mex";
const MAX_BODY: usize = 1024 * 1024;
const SOAP_XML: &str = "application/soap+xml; charset=utf-8";

/// Serves the demo STS on `listener` until `shutdown` resolves. Connections
/// still open then are closed when this returns.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(async move {
                        let io = TokioIo::new(stream);
                        let builder = auto::Builder::new(TokioExecutor::new());
                        if let Err(error) = builder.serve_connection(io, service_fn(handle)).await {
                            tracing::debug!(%error, "demo STS connection");
                        }
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(%error, "demo STS accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let lower = path.to_ascii_lowercase();
    if lower.starts_with(TOKEN_PATH) || lower.starts_with(FORMS_PATH) || lower == OIDC_PATH {
        return Ok(form_door(request).await);
    }
    let (status, content_type, body) = if request.method() == Method::GET && path == MEX_PATH {
        (
            StatusCode::OK,
            "application/soap+xml",
            Bytes::from_static(MEX),
        )
    } else if request.method() == Method::POST && path.starts_with(TRUST_PATH) {
        match Limited::new(request.into_body(), MAX_BODY).collect().await {
            Ok(body) => sign_in(&path, &body.to_bytes(), SystemTime::now()),
            Err(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"request body too large or broken\n"),
            ),
        }
    } else {
        (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"stsgate demo STS\n"),
        )
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        HeaderName::from_static("x-demo-sts"),
        HeaderValue::from_static("1"),
    );
    Ok(response)
}

const TOKEN_PATH: &str = "/adfs/oauth2/token";
const FORMS_PATH: &str = "/adfs/ls";
const OIDC_PATH: &str = "/adfs/.well-known/openid-configuration";

/// The token endpoint, the forms sign-in page and the OpenID configuration,
/// answered like ADFS (docs/DOMAIN.md).
async fn form_door(request: Request<Incoming>) -> Response<Full<Bytes>> {
    use stsgate_proxy::blocked::{
        FORMS_CONTENT_TYPE, FORMS_ERROR, ROPC_CONTENT_TYPE, ROPC_FAILURE, forms_page,
    };
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let lower = request.uri().path().to_ascii_lowercase();
    let host = request
        .headers()
        .get("x-forwarded-host")
        .or_else(|| request.headers().get(hyper::header::HOST))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost")
        .to_owned();
    let method = request.method().clone();
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let fields = |names| stsgate_proxy::signin::read_form(&body, names).ok();
    let mut headers: Vec<(&'static str, String)> = Vec::new();
    let (status, content_type, answer) = if lower == OIDC_PATH {
        let doc = serde_json::json!({
            "issuer": format!("https://{host}/adfs"),
            "authorization_endpoint": format!("https://{host}/adfs/oauth2/authorize/"),
            "token_endpoint": format!("https://{host}/adfs/oauth2/token/"),
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials", "password"],
        });
        (
            StatusCode::OK,
            "application/json",
            Bytes::from(doc.to_string()),
        )
    } else if lower.starts_with(TOKEN_PATH) {
        headers.push(("cache-control", "no-store".into()));
        headers.push(("pragma", "no-cache".into()));
        match fields(["username", "password", "grant_type"]) {
            Some([Some(user), Some(password), Some(grant)])
                if grant == "password" && password == DEMO_PASSWORD && !user.trim().is_empty() =>
            {
                let token = serde_json::json!({
                    "access_token": format!("demo.{}.unsigned", user.trim()),
                    "token_type": "bearer",
                    "expires_in": 3600,
                });
                (
                    StatusCode::OK,
                    ROPC_CONTENT_TYPE,
                    Bytes::from(token.to_string()),
                )
            }
            _ => (
                StatusCode::BAD_REQUEST,
                ROPC_CONTENT_TYPE,
                Bytes::from_static(ROPC_FAILURE.as_bytes()),
            ),
        }
    } else if method != Method::POST {
        (
            StatusCode::OK,
            FORMS_CONTENT_TYPE,
            forms_page(&target, "", ""),
        )
    } else {
        match fields(["UserName", "Password", "AuthMethod"]) {
            Some([Some(user), Some(password), _]) if password == DEMO_PASSWORD => {
                headers.push(("location", target.clone()));
                headers.push((
                    "set-cookie",
                    format!("MSISAuth=demo-{}; path=/adfs; HttpOnly; Secure", user.len()),
                ));
                (StatusCode::FOUND, FORMS_CONTENT_TYPE, Bytes::new())
            }
            found => {
                let user = found.and_then(|[u, _, _]| u).unwrap_or_default();
                (
                    StatusCode::OK,
                    FORMS_CONTENT_TYPE,
                    forms_page(&target, &user, FORMS_ERROR),
                )
            }
        }
    };
    let mut response = Response::new(Full::new(answer));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), value);
        }
    }
    h.insert(
        HeaderName::from_static("x-demo-sts"),
        HeaderValue::from_static("1"),
    );
    response
}

/// The answer to a sign-in request posted to `path`.
fn sign_in(path: &str, body: &[u8], now: SystemTime) -> (StatusCode, &'static str, Bytes) {
    match credentials(body) {
        Some((user, password)) if password == DEMO_PASSWORD => {
            let dialect = if path.contains("/13/") {
                &TRUST_13
            } else {
                &TRUST_2005
            };
            (
                StatusCode::OK,
                SOAP_XML,
                token_response(dialect, &user, now).into(),
            )
        }
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            SOAP_XML,
            failed_authentication(now).into(),
        ),
    }
}

/// The parts of a token response that differ between WS-Trust versions.
struct Dialect {
    namespace: &'static str,
    action: &'static str,
    request_type: &'static str,
    key_type: &'static str,
    /// Whether the response is wrapped in a `RequestSecurityTokenResponseCollection`.
    collection: bool,
}

const TRUST_2005: Dialect = Dialect {
    namespace: "http://schemas.xmlsoap.org/ws/2005/02/trust",
    action: "http://schemas.xmlsoap.org/ws/2005/02/trust/RSTR/Issue",
    request_type: "http://schemas.xmlsoap.org/ws/2005/02/trust/Issue",
    key_type: "http://schemas.xmlsoap.org/ws/2005/05/identity/NoProofKey",
    collection: false,
};

const TRUST_13: Dialect = Dialect {
    namespace: "http://docs.oasis-open.org/ws-sx/ws-trust/200512",
    action: "http://docs.oasis-open.org/ws-sx/ws-trust/200512/RSTRC/IssueFinal",
    request_type: "http://docs.oasis-open.org/ws-sx/ws-trust/200512/Issue",
    key_type: "http://docs.oasis-open.org/ws-sx/ws-trust/200512/Bearer",
    collection: true,
};

/// A token response for `user`, valid for an hour from `now`, holding an
/// unsigned SAML 1.1 assertion.
fn token_response(dialect: &Dialect, user: &str, now: SystemTime) -> String {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let assertion_id = format!("_demo-{nanos:x}-{serial}");
    let created = humantime::format_rfc3339_millis(now);
    let expires = humantime::format_rfc3339_millis(now + Duration::from_secs(3600));
    let user = escape(user);
    let Dialect {
        namespace,
        action,
        request_type,
        key_type,
        collection,
    } = dialect;
    let (open, close) = if *collection {
        (
            format!(r#"<t:RequestSecurityTokenResponseCollection xmlns:t="{namespace}">"#),
            "</t:RequestSecurityTokenResponseCollection>",
        )
    } else {
        (String::new(), "")
    };
    format!(
        r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://www.w3.org/2005/08/addressing" xmlns:u="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"><s:Header><a:Action s:mustUnderstand="1">{action}</a:Action></s:Header><s:Body>{open}<t:RequestSecurityTokenResponse xmlns:t="{namespace}"><t:Lifetime><u:Created>{created}</u:Created><u:Expires>{expires}</u:Expires></t:Lifetime><wsp:AppliesTo xmlns:wsp="http://schemas.xmlsoap.org/ws/2004/09/policy"><a:EndpointReference><a:Address>urn:federation:MicrosoftOnline</a:Address></a:EndpointReference></wsp:AppliesTo><t:RequestedSecurityToken><saml:Assertion MajorVersion="1" MinorVersion="1" AssertionID="{assertion_id}" Issuer="http://stsgate.demo/adfs/services/trust" IssueInstant="{created}" xmlns:saml="urn:oasis:names:tc:SAML:1.0:assertion"><saml:Conditions NotBefore="{created}" NotOnOrAfter="{expires}"><saml:AudienceRestrictionCondition><saml:Audience>urn:federation:MicrosoftOnline</saml:Audience></saml:AudienceRestrictionCondition></saml:Conditions><saml:AttributeStatement><saml:Subject><saml:NameIdentifier Format="http://schemas.xmlsoap.org/claims/UPN">{user}</saml:NameIdentifier><saml:SubjectConfirmation><saml:ConfirmationMethod>urn:oasis:names:tc:SAML:1.0:cm:bearer</saml:ConfirmationMethod></saml:SubjectConfirmation></saml:Subject><saml:Attribute AttributeName="UPN" AttributeNamespace="http://schemas.xmlsoap.org/claims"><saml:AttributeValue>{user}</saml:AttributeValue></saml:Attribute></saml:AttributeStatement></saml:Assertion></t:RequestedSecurityToken><t:TokenType>urn:oasis:names:tc:SAML:1.0:assertion</t:TokenType><t:RequestType>{request_type}</t:RequestType><t:KeyType>{key_type}</t:KeyType></t:RequestSecurityTokenResponse>{close}</s:Body></s:Envelope>"#
    )
}

/// The fault ADFS answers to a wrong password or an unknown user.
fn failed_authentication(now: SystemTime) -> String {
    let created = humantime::format_rfc3339_millis(now);
    let expires = humantime::format_rfc3339_millis(now + Duration::from_secs(300));
    format!(
        r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://www.w3.org/2005/08/addressing" xmlns:u="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"><s:Header><a:Action s:mustUnderstand="1">http://www.w3.org/2005/08/addressing/soap/fault</a:Action><o:Security s:mustUnderstand="1" xmlns:o="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"><u:Timestamp u:Id="_0"><u:Created>{created}</u:Created><u:Expires>{expires}</u:Expires></u:Timestamp></o:Security></s:Header><s:Body><s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value xmlns:a="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">a:FailedAuthentication</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">ID3242: The security token could not be authenticated or authorized.</s:Text></s:Reason></s:Fault></s:Body></s:Envelope>"#
    )
}

const MEX: &[u8] = br#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><Metadata xmlns="http://schemas.xmlsoap.org/ws/2004/09/mex"><MetadataSection Dialect="http://schemas.xmlsoap.org/wsdl/"><wsdl:definitions name="SecurityTokenService" targetNamespace="http://stsgate.demo/adfs/services/trust" xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/"><wsdl:documentation>stsgate demo STS: placeholder metadata. Endpoints: /adfs/services/trust/2005/usernamemixed and /adfs/services/trust/13/usernamemixed; password "demo".</wsdl:documentation></wsdl:definitions></MetadataSection></Metadata></s:Body></s:Envelope>"#;

/// Escapes text for element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// `(username, password)` from `Envelope/Header/Security/UsernameToken`,
/// namespace-aware, entities decoded, the username trimmed. Same limits as
/// the gate's own reader: no DOCTYPE, depth 32, 4096 events, 256 namespace
/// declarations; `None` when anything is off. Only for the demo STS.
fn credentials(body: &[u8]) -> Option<(String, String)> {
    const SOAP: [&[u8]; 2] = [
        b"http://www.w3.org/2003/05/soap-envelope",
        b"http://schemas.xmlsoap.org/soap/envelope/",
    ];
    const WSSE: &[u8] =
        b"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
    // The path to the token, one level at a time.
    const TOKEN: [(&[&[u8]], &[u8]); 4] = [
        (&SOAP, b"Envelope"),
        (&SOAP, b"Header"),
        (&[WSSE], b"Security"),
        (&[WSSE], b"UsernameToken"),
    ];

    let mut reader = NsReader::from_str(std::str::from_utf8(body).ok()?);
    reader.config_mut().expand_empty_elements = true;
    let (mut depth, mut matched, mut ns_decls) = (0, 0, 0);
    let mut fields: [Option<String>; 2] = [None, None]; // username, password
    let mut inside: Option<usize> = None; // index into `fields` while inside one
    for _ in 0..4096 {
        match reader.read_event().ok()? {
            Event::Start(start) => {
                depth += 1;
                ns_decls += start
                    .attributes()
                    .with_checks(false)
                    .map_while(Result::ok)
                    .filter(|a| a.key.as_namespace_binding().is_some())
                    .count();
                if depth > 32 || ns_decls > 256 || inside.is_some() {
                    return None;
                }
                let (ns, local) = reader.resolve_element(start.name());
                let ns = match ns {
                    ResolveResult::Bound(Namespace(ns)) => ns,
                    _ => b"",
                };
                if matched == TOKEN.len() && depth == matched + 1 && ns == WSSE {
                    inside = match local.as_ref() {
                        b"Username" => Some(0),
                        b"Password" => Some(1),
                        _ => None,
                    };
                    if let Some(i) = inside {
                        if fields[i].is_some() {
                            return None;
                        }
                        fields[i] = Some(String::new());
                    }
                } else if matched < TOKEN.len() && depth == matched + 1 {
                    let (namespaces, name) = TOKEN[matched];
                    if local.as_ref() == name && namespaces.contains(&ns) {
                        matched += 1;
                    }
                }
            }
            Event::End(_) => {
                inside = None;
                if matched == TOKEN.len() && depth == matched {
                    let [user, password] = fields;
                    let user = user?.trim().to_owned();
                    return (!user.is_empty()).then_some((user, password?));
                }
                if matched == depth {
                    matched -= 1;
                }
                depth -= 1;
            }
            Event::Text(text) => {
                if let Some(i) = inside {
                    fields[i].as_mut()?.push_str(&text.decode().ok()?);
                }
            }
            Event::CData(cdata) => {
                if let Some(i) = inside {
                    fields[i].as_mut()?.push_str(&cdata.decode().ok()?);
                }
            }
            Event::GeneralRef(reference) => {
                if let Some(i) = inside {
                    let c = match &*reference {
                        b"lt" => '<',
                        b"gt" => '>',
                        b"amp" => '&',
                        b"apos" => '\'',
                        b"quot" => '"',
                        _ => reference.resolve_char_ref().ok()??,
                    };
                    fields[i].as_mut()?.push(c);
                }
            }
            Event::DocType(_) | Event::Eof => return None,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const RST_2005: &str = include_str!("../../../testdata/wstrust/rst-2005-usernamemixed.xml");
    const RST_13: &str = include_str!("../../../testdata/wstrust/rst-13-usernamemixed.xml");

    /// One HTTP/1.1 exchange: `(status, lower-cased head, body)`.
    async fn exchange(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: sts.contoso.com\r\nContent-Type: {SOAP_XML}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    fn assert_well_formed(xml: &str) {
        let mut reader = NsReader::from_str(xml);
        loop {
            match reader.read_event() {
                Ok(Event::Eof) => break,
                Ok(_) => {}
                Err(error) => panic!("{error}: {xml}"),
            }
        }
    }

    #[tokio::test]
    async fn answers_ropc_and_forms_like_adfs() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, async {
            let _ = stopped.await;
        }));
        let token = "/adfs/oauth2/token";
        let (status, head, body) = exchange(
            addr,
            "POST",
            token,
            "grant_type=password&username=a%40b.c&password=demo",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("access_token") && head.contains("cache-control: no-store"));
        let (status, _, body) = exchange(
            addr,
            "POST",
            token,
            "grant_type=password&username=a&password=x",
        )
        .await;
        assert_eq!(
            (status, body.as_str()),
            (400, stsgate_proxy::blocked::ROPC_FAILURE)
        );
        let page = "/adfs/ls/?wa=wsignin1.0";
        let (status, head, _) = exchange(
            addr,
            "POST",
            page,
            "UserName=a&Password=demo&AuthMethod=FormsAuthentication",
        )
        .await;
        assert_eq!(status, 302);
        assert!(head.contains("set-cookie: msisauth="), "{head}");
        let (status, _, body) = exchange(addr, "POST", page, "UserName=a&Password=x").await;
        assert_eq!(status, 200);
        assert!(body.contains(stsgate_proxy::blocked::FORMS_ERROR));
        let (status, _, body) = exchange(addr, "GET", page, "").await;
        assert_eq!(status, 200);
        assert!(body.contains(r#"name="UserName""#));
        let (status, _, body) =
            exchange(addr, "GET", "/adfs/.well-known/openid-configuration", "").await;
        assert_eq!(status, 200);
        assert!(body.contains("/adfs/oauth2/token/"), "{body}");
        let _ = stop.send(());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn answers_like_adfs() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, async {
            let _ = stopped.await;
        }));

        let good_2005 = RST_2005.replace("correct horse &amp; battery", DEMO_PASSWORD);
        let (status, head, body) = exchange(
            addr,
            "POST",
            "/adfs/services/trust/2005/usernamemixed",
            &good_2005,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(head.contains("x-demo-sts: 1"), "{head}");
        assert!(
            head.contains("content-type: application/soap+xml; charset=utf-8"),
            "{head}"
        );
        assert!(body.contains("<t:RequestSecurityTokenResponse "), "{body}");
        assert!(!body.contains("Collection"), "{body}");
        assert!(
            body.contains(">d&apos;arcy@contoso.com</saml:NameIdentifier>"),
            "{body}"
        );
        assert_well_formed(&body);

        let good_13 = RST_13.replace("Summer2026!", DEMO_PASSWORD);
        let (status, _, body) = exchange(
            addr,
            "POST",
            "/adfs/services/trust/13/usernamemixed",
            &good_13,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("<t:RequestSecurityTokenResponseCollection "),
            "{body}"
        );
        assert!(
            body.contains(">CONTOSO\\alice</saml:NameIdentifier>"),
            "{body}"
        );
        assert_well_formed(&body);

        for (path, request) in [
            ("/adfs/services/trust/2005/usernamemixed", RST_2005),
            ("/adfs/services/trust/13/usernamemixed", RST_13),
            ("/adfs/services/trust/13/usernamemixed", "not xml"),
        ] {
            let (status, head, body) = exchange(addr, "POST", path, request).await;
            assert_eq!(status, 500, "{body}");
            assert!(head.contains("x-demo-sts: 1"), "{head}");
            assert!(body.contains(">a:FailedAuthentication</s:Value>"), "{body}");
            assert!(body.contains("ID3242"), "{body}");
            assert_well_formed(&body);
        }

        let (status, head, body) = exchange(addr, "GET", MEX_PATH, "").await;
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: application/soap+xml"),
            "{head}"
        );
        assert_well_formed(&body);
        let (status, head, body) = exchange(addr, "GET", "/", "").await;
        assert_eq!((status, body.as_str()), (200, "stsgate demo STS\n"));
        assert!(head.contains("x-demo-sts: 1"), "{head}");

        stop.send(()).unwrap();
        server.await.unwrap();
    }

    #[test]
    fn reads_credentials() {
        assert_eq!(
            credentials(RST_2005.as_bytes()),
            Some((
                "d'arcy@contoso.com".into(),
                "correct horse & battery".into()
            ))
        );
        assert_eq!(
            credentials(RST_13.as_bytes()),
            Some(("CONTOSO\\alice".into(), "Summer2026!".into()))
        );
        let doctype = format!("<!DOCTYPE x>{RST_13}");
        assert_eq!(credentials(doctype.as_bytes()), None);
        let deep = RST_13.replace(
            "<s:Header>",
            &format!(
                "<s:Header>{}{}",
                "<x>".repeat(10_000),
                "</x>".repeat(10_000)
            ),
        );
        assert_eq!(credentials(deep.as_bytes()), None);
        let wrong_ns = RST_13.replace("wss-wssecurity-secext", "wss-other");
        assert_eq!(credentials(wrong_ns.as_bytes()), None);
    }

    #[test]
    fn escapes_names() {
        assert_eq!(escape(r#"<a&'b">"#), "&lt;a&amp;&apos;b&quot;&gt;");
    }
}
