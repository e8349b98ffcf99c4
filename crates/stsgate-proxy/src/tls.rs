//! rustls configuration for the listener and the upstream client. One
//! crypto provider (ring) for the whole tree; PEM through rustls-pki-types.
//!
//! Certificate rotation without a restart: the listener's chain and key
//! ([`ListenerTls`], a [`ResolvesServerCert`]) and the upstream's trust
//! roots ([`UpstreamTrust`], a [`ServerCertVerifier`]) are read per
//! handshake through arc-swap, so a reload changes what NEW connections
//! get while open ones keep theirs. [`hot_reload`] reloads them when their
//! files change (the rules' directory watch and one-second identity
//! check), and with every rule reload (SIGHUP, `POST /api/v1/reload`). A
//! pair or CA file that does not load keeps the one in force: logged at
//! ERROR and counted in `stsgate_tls_reloads_total{result="failure"}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use prometheus::IntCounterVec;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
    WebPkiServerVerifier,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, NamedGroup, RootCertStore, ServerConfig, SignatureScheme,
};

use crate::config::TlsFiles;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad PEM in {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

/// The listener's TLS: HTTP/2 and HTTP/1.1 offered by ALPN, with the
/// certificate of `files` as loaded now (no reloading: see [`ListenerTls`]).
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>> {
    ListenerTls::load(files)?.server_config()
}

// ---- the listener's certificate -------------------------------------------

/// The listener's certificate chain and key, swapped whole on reload; every
/// handshake takes the pair in force when it starts.
pub struct ListenerTls {
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("cert", &self.files.cert)
            .field("key", &self.files.key)
            .finish_non_exhaustive()
    }
}

impl ListenerTls {
    /// Reads the chain and key of `files`; they must make a pair.
    pub fn load(files: &TlsFiles) -> Result<Arc<ListenerTls>> {
        let provider = provider();
        let pair = read_pair(files, &provider)?;
        Ok(Arc::new(ListenerTls {
            files: files.clone(),
            current: ArcSwap::from_pointee(pair),
            provider,
        }))
    }

    /// A server config that resolves to the pair in force at each handshake.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Re-reads the files (blocking); on error the pair in force stays.
    pub fn reload(&self) -> Result<()> {
        let pair = read_pair(&self.files, &self.provider)?;
        self.current.store(Arc::new(pair));
        Ok(())
    }

    /// The pair in force.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for ListenerTls {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey> {
    let certs = load_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("cannot read the private key from {}", files.key.display()))?;
    CertifiedKey::from_der(certs, key, provider).with_context(|| {
        format!(
            "the certificate and key do not make a valid pair ({} and {})",
            files.cert.display(),
            files.key.display()
        )
    })
}

// ---- the upstream's trust roots --------------------------------------------

/// The upstream client's trust: the system's roots plus `upstream.ca_file`,
/// swapped whole on reload. One per gate, shared by every worker's client
/// (it lives in the upstream [`crate::upstream::Farm`]). Each new upstream
/// TLS connection is verified against the roots in force; a reload also
/// forgets the TLS sessions kept for resumption (a resumed session skips
/// certificate verification), so a new connection is always checked
/// against the new roots. Pooled keep-alive connections keep working until
/// they close (60 s idle at most).
pub struct UpstreamTrust {
    ca_file: Option<PathBuf>,
    /// The certificates `ca_file` held at the last (re)load.
    loaded: std::sync::Mutex<Vec<CertificateDer<'static>>>,
    verifier: ArcSwap<WebPkiServerVerifier>,
    sessions: ArcSwap<ClientSessionMemoryCache>,
}

/// TLS sessions kept for resumption (rustls' default).
const SESSIONS: usize = 256;

impl std::fmt::Debug for UpstreamTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTrust")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl UpstreamTrust {
    /// The system's roots plus those of `ca_file`.
    pub fn load(ca_file: Option<&Path>) -> Result<Arc<UpstreamTrust>> {
        let extra = ca_file.map(load_certs).transpose()?.unwrap_or_default();
        Ok(Arc::new(UpstreamTrust {
            ca_file: ca_file.map(Path::to_path_buf),
            verifier: ArcSwap::new(verifier(ca_file, &extra)?),
            loaded: std::sync::Mutex::new(extra),
            sessions: ArcSwap::from_pointee(ClientSessionMemoryCache::new(SESSIONS)),
        }))
    }

    /// The CA file, if any.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Re-reads the CA file (blocking) and, when it changed, swaps the
    /// roots in (the system's re-read too); on error those in force stay.
    pub fn reload(&self) -> Result<()> {
        let Some(ca_file) = self.ca_file.as_deref() else {
            return Ok(());
        };
        let extra = load_certs(ca_file)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if *loaded == extra {
            return Ok(());
        }
        let verifier = verifier(Some(ca_file), &extra)?;
        *loaded = extra;
        self.verifier.store(verifier);
        self.sessions
            .store(Arc::new(ClientSessionMemoryCache::new(SESSIONS)));
        Ok(())
    }

    /// A client config verifying with the roots in force at each handshake.
    pub fn client_config(self: &Arc<Self>) -> Result<ClientConfig> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::store(self.clone());
        Ok(config)
    }
}

/// The system's roots plus `extra`, read from `ca_file`.
fn roots(ca_file: Option<&Path>, extra: &[CertificateDer<'static>]) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system root rustls cannot use is skipped, as other TLS stacks do.
        let _ = roots.add(cert);
    }
    for cert in extra {
        roots.add(cert.clone()).with_context(|| {
            let path = ca_file.unwrap_or(Path::new("the CA file"));
            format!("unusable CA certificate in {}", path.display())
        })?;
    }
    Ok(roots)
}

fn verifier(
    ca_file: Option<&Path>,
    extra: &[CertificateDer<'static>],
) -> Result<Arc<WebPkiServerVerifier>> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_file, extra)?), provider())
        .build()
        .context("no usable trust root")
}

impl ServerCertVerifier for UpstreamTrust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier.load().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier
            .load()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier
            .load()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier.load().supported_verify_schemes()
    }
}

impl ClientSessionStore for UpstreamTrust {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.sessions.load().set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.sessions.load().kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.sessions.load().set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.sessions.load().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.sessions.load().remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.sessions.load().insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.sessions.load().take_tls13_ticket(server_name)
    }
}

/// The upstream client's TLS: the system's trust roots plus `ca_file`, as
/// they are now (no reloading: see [`UpstreamTrust`]).
pub fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(
            ca_file,
            &ca_file.map(load_certs).transpose()?.unwrap_or_default(),
        )?)
        .with_no_client_auth())
}

// ---- reloading ---------------------------------------------------------------

/// One reloadable piece of TLS material.
enum Part {
    Listener(Arc<ListenerTls>),
    Upstream(Arc<UpstreamTrust>),
}

impl Part {
    fn what(&self) -> &'static str {
        match self {
            Part::Listener(_) => "listener certificate and key",
            Part::Upstream(_) => "upstream.ca_file",
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        match self {
            Part::Listener(l) => vec![l.files.cert.clone(), l.files.key.clone()],
            Part::Upstream(u) => u.ca_file.iter().cloned().collect(),
        }
    }

    fn reload(&self) -> Result<()> {
        match self {
            Part::Listener(l) => l.reload(),
            Part::Upstream(u) => u.reload(),
        }
    }
}

/// Reloads the listener's pair and the upstream's CA file.
pub struct TlsReloader {
    parts: Vec<Part>,
    counts: IntCounterVec,
    reloading: tokio::sync::Mutex<()>,
}

/// How long a failed reload after a file change waits for the files to
/// change again (a certificate written before its key) before it counts.
const SETTLE: Duration = Duration::from_secs(1);

impl TlsReloader {
    /// A reloader of `listener` and of `upstream` (when it has a CA file);
    /// `counts` is `stsgate_tls_reloads_total`.
    pub fn new(
        listener: Option<Arc<ListenerTls>>,
        upstream: Option<Arc<UpstreamTrust>>,
        counts: IntCounterVec,
    ) -> Arc<TlsReloader> {
        let mut parts = Vec::new();
        parts.extend(listener.map(Part::Listener));
        parts.extend(upstream.filter(|u| u.ca_file.is_some()).map(Part::Upstream));
        Arc::new(TlsReloader {
            parts,
            counts,
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// Nothing to reload (no TLS listener, no upstream CA file).
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Reloads everything now; true when all of it loaded. `trigger` is logged.
    pub async fn reload(self: &Arc<Self>, trigger: &'static str) -> bool {
        let all: Vec<usize> = (0..self.parts.len()).collect();
        let mut ok = true;
        for (i, result) in self.attempt(all).await {
            ok &= self.report(i, trigger, result);
        }
        ok
    }

    /// Loads `which` off the async threads, swapping in what loads.
    async fn attempt(self: &Arc<Self>, which: Vec<usize>) -> Vec<(usize, Result<()>)> {
        let _one_at_a_time = self.reloading.lock().await;
        let this = self.clone();
        let fallback = which.clone();
        tokio::task::spawn_blocking(move || {
            which
                .into_iter()
                .map(|i| (i, this.parts[i].reload()))
                .collect()
        })
        .await
        .unwrap_or_else(|e| {
            fallback
                .into_iter()
                .map(|i| (i, Err(anyhow::anyhow!("reload failed: {e}"))))
                .collect()
        })
    }

    fn report(&self, i: usize, trigger: &'static str, result: Result<()>) -> bool {
        let what = self.parts[i].what();
        match result {
            Ok(()) => {
                self.counts.with_label_values(&["success"]).inc();
                tracing::info!(trigger, what, "TLS reloaded: new connections use it");
                true
            }
            Err(e) => {
                self.counts.with_label_values(&["failure"]).inc();
                tracing::error!(
                    trigger,
                    what,
                    "TLS reload refused, the one in force kept: {e:#}"
                );
                false
            }
        }
    }

    /// Reloads each part when its files change on disk (their directories
    /// watched, and every second each file's identity compared, which also
    /// catches Kubernetes secret updates), until `shutdown` resolves. A
    /// failure is counted once the files have stayed unchanged for
    /// [`SETTLE`], so a chain written a moment before its key is not.
    pub async fn watch(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        use crate::reload::{fingerprints, watch_dirs};
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        tokio::pin!(shutdown);
        let files: Vec<Vec<PathBuf>> = self.parts.iter().map(Part::files).collect();
        let _watcher = watch_dirs(&files.concat(), tx);
        let mut seen = Vec::with_capacity(files.len());
        for f in &files {
            seen.push(fingerprints(f).await);
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = rx.recv() => {}
                _ = tick.tick() => {}
            }
            let mut pending = Vec::new();
            for (i, f) in files.iter().enumerate() {
                if fingerprints(f).await != seen[i] {
                    pending.push(i);
                }
            }
            if pending.is_empty() {
                continue;
            }
            // Let a burst of writes (mv, a secret's symlink swap) settle.
            tokio::time::sleep(Duration::from_millis(150)).await;
            while rx.try_recv().is_ok() {}
            for _ in 0..5 {
                for &i in &pending {
                    seen[i] = fingerprints(&files[i]).await;
                }
                let mut failed = Vec::new();
                for (i, result) in self.attempt(pending).await {
                    match result {
                        Ok(()) => {
                            self.report(i, "file change", Ok(()));
                        }
                        Err(e) => failed.push((i, e)),
                    }
                }
                if failed.is_empty() {
                    break;
                }
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(SETTLE) => {}
                }
                while rx.try_recv().is_ok() {}
                pending = Vec::new();
                for (i, e) in failed {
                    if fingerprints(&files[i]).await == seen[i] {
                        self.report(i, "file change", Err(e));
                    } else {
                        pending.push(i);
                    }
                }
                if pending.is_empty() {
                    break;
                }
            }
        }
    }
}

/// Sets up certificate rotation: `listener`'s pair and `upstream`'s CA file
/// reloaded with every rule reload (SIGHUP, the API, a rule file change)
/// and when their files change. The returned future watches the files
/// until `shutdown` resolves (at once when there is nothing to reload).
pub fn hot_reload(
    listener: Option<Arc<ListenerTls>>,
    upstream: Option<Arc<UpstreamTrust>>,
    rules: &crate::reload::Rules,
    metrics: &crate::metrics::Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let reloader = TlsReloader::new(listener, upstream, metrics.tls_reloads.clone());
    if !reloader.is_empty() {
        let on_reload = reloader.clone();
        rules.also_on_reload(move |trigger| {
            let r = on_reload.clone();
            tokio::spawn(async move {
                r.reload(trigger).await;
            });
        });
    }
    async move {
        if !reloader.is_empty() {
            reloader.watch(shutdown).await;
        }
    }
}
