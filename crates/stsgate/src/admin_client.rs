//! A small client of the running gate's admin API, for the `block`,
//! `lockout` and `explain --admin` commands: the URL and token from the
//! command line, or both from the config file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Where the admin API is and how to authenticate.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// The admin listener, e.g. http://127.0.0.1:9100 (default: admin.addr of --config).
    #[arg(long)]
    pub admin: Option<String>,
    /// A file holding the admin bearer token (default: admin.token_file of --config).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The gate's config file, to take the admin address and token from.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// A connection-per-call client of `/api/v1`.
pub struct AdminClient {
    base: Uri,
    token: String,
}

/// An answer: status and body (JSON when it parses).
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// The body as JSON (`Null` when empty or not JSON).
    pub json: serde_json::Value,
}

impl AdminClient {
    /// From `--admin`/`--token-file`, falling back to `--config`.
    pub fn new(target: &Target) -> Result<AdminClient> {
        let config = match &target.config {
            Some(path) => Some(stsgate_proxy::Config::load(path).map_err(|errors| {
                anyhow!(
                    "{}",
                    errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })?),
            None => None,
        };
        let base = match (&target.admin, &config) {
            (Some(url), _) => url.clone(),
            (None, Some(c)) if c.admin.addr.port() == 0 => {
                // Bound to a port chosen at start: the running gate wrote it down.
                let file = c.state.dir.join(stsgate_proxy::server::ADMIN_ADDR_FILE);
                let addr = std::fs::read_to_string(&file).with_context(|| {
                    format!(
                        "admin.addr has port 0 and {} cannot be read (is stsgate running?)",
                        file.display()
                    )
                })?;
                format!("http://{}", addr.trim())
            }
            (None, Some(c)) => format!("http://{}", c.admin.addr),
            (None, None) => bail!("say where the gate is: --admin URL, or --config FILE"),
        };
        let token_file = match (&target.token_file, &config) {
            (Some(f), _) => f.clone(),
            (None, Some(c)) => match &c.admin.token_file {
                Some(f) => f.clone(),
                None => bail!("the config sets no admin.token_file: the admin API is off"),
            },
            (None, None) => bail!("say which token to use: --token-file FILE, or --config FILE"),
        };
        AdminClient::with(&base, &token_file)
    }

    /// A client of `base` with the token in `token_file`.
    pub fn with(base: &str, token_file: &Path) -> Result<AdminClient> {
        let base: Uri = base
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("invalid admin URL {base:?}"))?;
        if base.scheme_str() != Some("http") || base.authority().is_none() {
            bail!("invalid admin URL {base}: expected http://HOST:PORT");
        }
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("cannot read the token file {}", token_file.display()))?
            .trim()
            .to_string();
        if token.is_empty() {
            bail!("the token file {} is empty", token_file.display());
        }
        Ok(AdminClient { base, token })
    }

    /// Calls `method path` with an optional JSON body.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(self.call_async(method, path, body))
    }

    async fn call_async(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer> {
        let authority = self.base.authority().expect("checked").as_str().to_string();
        let shown = format!("{}{path}", self.base);
        let stream = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::net::TcpStream::connect(&authority),
        )
        .await
        .map_err(|_| {
            anyhow!(
                "cannot reach the gate's admin API at {}: timed out",
                self.base
            )
        })?
        .map_err(|e| {
            anyhow!(
                "cannot reach the gate's admin API at {}: {e} (is stsgate running?)",
                self.base
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("cannot talk to {}", self.base))?;
        let driver = tokio::spawn(conn);
        let payload = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v)?),
            None => Bytes::new(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, authority.as_str())
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            );
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(payload))?;
        let response =
            tokio::time::timeout(std::time::Duration::from_secs(30), sender.send_request(req))
                .await
                .map_err(|_| anyhow!("{shown}: no answer within 30s"))?
                .with_context(|| format!("{shown}: the request failed"))?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        driver.abort();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        match status {
            StatusCode::UNAUTHORIZED => {
                bail!(
                    "the gate refused the admin token (401): check --token-file or admin.token_file"
                )
            }
            StatusCode::NOT_FOUND if json.is_null() => {
                bail!(
                    "{shown}: not found (is admin.token_file set on the gate? without it the API is off)"
                )
            }
            _ => Ok(Answer { status, json }),
        }
    }
}

/// The `error` of a JSON error answer, or the status.
pub fn error_text(answer: &Answer) -> String {
    match answer.json.get("error").and_then(|e| e.as_str()) {
        Some(e) => format!("{e} ({})", answer.status),
        None => format!("the gate answered {}", answer.status),
    }
}
