//! TLS to PostgreSQL (`sslmode=require` or `verify-full` with `sslrootcert`): rustls on vouch's one
//! provider (aws-lc-rs, through `vouch-tls`), the server's certificate verified against the CA file
//! and its name. vouch never speaks unverified TLS: `require` verifies as `verify-full` does (libpq
//! would skip verification), and `prefer` or `allow` connect in plain text, as without TLS.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::Socket;

use crate::StoreError;

/// The connector of a store: TLS verified against a CA file, or none (every connection plain,
/// `sslmode` forced to `disable`).
#[derive(Clone, Default)]
pub(crate) struct PgTls(Option<tokio_rustls::TlsConnector>);

impl PgTls {
    /// A connector trusting the CAs of the PEM file `ca_file`, or none without one.
    pub(crate) fn new(ca_file: Option<&PathBuf>) -> Result<Self, StoreError> {
        let Some(path) = ca_file else { return Ok(Self(None)) };
        let connector = vouch_tls::tls_connector(&vouch_tls::Trust::CaFile(path.clone()))
            .map_err(|e| StoreError::Backend(format!("TLS to PostgreSQL (sslrootcert): {e}")))?;
        Ok(Self(Some(connector)))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl MakeTlsConnect<Socket> for PgTls {
    type Stream = PgTlsStream;
    type TlsConnect = PgTlsConnect;
    type Error = BoxError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, BoxError> {
        // Called for every TCP connection; used only when sslmode asks for TLS.
        let name = match &self.0 {
            Some(_) => Some(
                ServerName::try_from(domain.to_owned())
                    .map_err(|e| format!("`{domain}` is not a host name TLS can verify: {e}"))?,
            ),
            None => None,
        };
        Ok(PgTlsConnect { connector: self.0.clone(), name })
    }
}

/// One connection's TLS handshake.
pub(crate) struct PgTlsConnect {
    connector: Option<tokio_rustls::TlsConnector>,
    name: Option<ServerName<'static>>,
}

impl TlsConnect<Socket> for PgTlsConnect {
    type Stream = PgTlsStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream, BoxError>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let (Some(connector), Some(name)) = (self.connector, self.name) else {
                return Err(
                    "TLS to PostgreSQL is not configured (set sslmode=verify-full and sslrootcert)".into()
                );
            };
            let tls = connector.connect(name, stream).await?;
            Ok(PgTlsStream(tls))
        })
    }
}

/// A TLS connection to PostgreSQL.
pub(crate) struct PgTlsStream(tokio_rustls::client::TlsStream<Socket>);

impl AsyncRead for PgTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl TlsStream for PgTlsStream {
    // SCRAM without channel binding (as libpq's `channel_binding=prefer` against a server that does
    // not require it): the certificate check above is what binds the session to the server.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
