//! The HTTP server: routes, pre-upgrade checks, and the accept loop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ORIGIN, SEC_WEBSOCKET_PROTOCOL};
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use proto::{Access, DocId};
use tokio::net::TcpListener;

use crate::doc::{self, ConnParams};
use crate::error::GatewayError;
use crate::state::Gateway;

impl Gateway {
    fn check_origin(&self, req: &Request<Incoming>) -> Result<(), GatewayError> {
        if self.cfg.allowed_origins.is_empty() {
            return Ok(());
        }
        match req.headers().get(ORIGIN) {
            // Non-browser clients send no Origin; the allow-list protects browsers' ambient credentials.
            None => Ok(()),
            Some(o) => {
                let o = o.to_str().map_err(|_| GatewayError::OriginNotAllowed)?;
                if self.cfg.allowed_origins.iter().any(|a| a == o) {
                    Ok(())
                } else {
                    Err(GatewayError::OriginNotAllowed)
                }
            }
        }
    }

    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => {
                if self.routes.healthy() {
                    text(200, "ok\n", "text/plain")
                } else {
                    text(503, "no shard available\n", "text/plain")
                }
            }
            (&Method::GET, "/metrics") => {
                text(200, &self.metrics.render(), "text/plain; version=0.0.4")
            }
            (_, "/v1") => match self.clone().upgrade_v1(&mut req).await {
                Ok(resp) => resp,
                Err(e) => e.into_response(),
            },
            (_, p) if p.starts_with("/doc/") => {
                match self.clone().upgrade_doc(&mut req, &p[5..]).await {
                    Ok(resp) => resp,
                    Err(e) => e.into_response(),
                }
            }
            _ => GatewayError::NotFound.into_response(),
        }
    }

    async fn upgrade_v1(
        self: Arc<Self>,
        req: &mut Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, GatewayError> {
        self.check_origin(req)?;
        if !fastwebsockets::upgrade::is_upgrade_request(req) {
            return Err(GatewayError::UpgradeRequired);
        }
        let (token, protocol) = find_token(req);
        let identity = self.auth.authenticate(token.as_deref())?;
        if self.is_closing() {
            return Err(GatewayError::Unavailable);
        }
        let (mut response, fut) =
            fastwebsockets::upgrade::upgrade(req).map_err(|_| GatewayError::BadHandshake)?;
        if let Some(p) = protocol {
            if let Ok(v) = HeaderValue::from_str(&p) {
                response.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, v);
            }
        }
        let gw = self.clone();
        tokio::spawn(async move {
            match fut.await {
                Ok(ws) => crate::v1::run(gw, identity, ws).await,
                Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
            }
        });
        let (parts, _) = response.into_parts();
        Ok(Response::from_parts(parts, Full::new(Bytes::new())))
    }

    async fn upgrade_doc(
        self: Arc<Self>,
        req: &mut Request<Incoming>,
        raw_id: &str,
    ) -> Result<Response<Full<Bytes>>, GatewayError> {
        let doc = DocId::parse(raw_id).map_err(|_| GatewayError::BadDocId)?;
        self.check_origin(req)?;
        if !fastwebsockets::upgrade::is_upgrade_request(req) {
            return Err(GatewayError::UpgradeRequired);
        }
        let (token, protocol) = find_token(req);
        let principal = self.auth.authorize(token.as_deref(), &doc)?;
        if self.is_closing() {
            return Err(GatewayError::Unavailable);
        }
        let shard = self
            .routes
            .shard_for(&doc)
            .await
            .ok_or(GatewayError::Unavailable)?;
        let (mut response, fut) =
            fastwebsockets::upgrade::upgrade(req).map_err(|_| GatewayError::BadHandshake)?;
        if let Some(p) = protocol {
            if let Ok(v) = HeaderValue::from_str(&p) {
                response.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, v);
            }
        }
        let params = ConnParams {
            conn: self.next_conn_id(),
            doc,
            actor: principal.user,
            can_write: principal.access >= Access::Write,
        };
        let gw = self.clone();
        let task = async move {
            match fut.await {
                Ok(ws) => doc::run(gw, shard, params, ws).await,
                Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
            }
        };
        tokio::spawn(task);
        let (parts, _) = response.into_parts();
        Ok(Response::from_parts(parts, Full::new(Bytes::new())))
    }
}

/// The token from `?token=` or a `Sec-WebSocket-Protocol` entry, and the sub-protocol to echo.
/// Browsers require the server to echo one of the offered sub-protocols; a non-token entry is
/// preferred so the token is not reflected.
fn find_token(req: &Request<Incoming>) -> (Option<String>, Option<String>) {
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v.to_owned())
    });
    let offered: Vec<String> = req
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let is_jwt = |s: &str| s.starts_with("eyJ") && s.split('.').count() == 3;
    let from_protocol = offered.iter().find(|s| is_jwt(s)).cloned();
    let echo = offered
        .iter()
        .find(|s| !is_jwt(s))
        .or(offered.first())
        .cloned();
    (from_query.or(from_protocol), echo)
}

fn text(status: u16, body: &str, ctype: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Binds the listening socket with `backlog` pending connections (tokio's `TcpListener::bind`
/// uses 1024; `bench idle-connections` overflowed it while opening 18,000 sockets, and every
/// dropped SYN cost its client a one-second retry).
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(backlog.max(1))
}

/// Serves HTTP and WebSocket on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of file descriptors and similar: keep serving the sockets we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let gw = gw.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(gw.handle(req).await) }
            });
            // With a timer, hyper enforces its header-read timeout on idle or slow HTTP connections.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "http connection ended with error");
            }
        });
    }
    gw.begin_shutdown();
    Ok(())
}
